"""Host-to-device staging through pinned buffers on a copy stream (cudasim, cuda)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import gpustream as gs
from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.staging import Stager


def _batch(n: int, seed: int, dicts: dict[str, StringDictionary]) -> Batch:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    return Batch.from_arrow(pa.record_batch({
        "ts": pa.array(rng.integers(0, 10**12, n), pa.timestamp("ms")),
        "v": pa.array(values, mask=rng.random(n) < 0.2),
        "k": pa.array(rng.choice(["a", "b", "c"], n)),
        "flag": pa.array(rng.random(n) < 0.5),
    }), dicts)


def test_staged_batches_land_unchanged_while_buffers_are_reused(device_backend: Backend) -> None:
    stager = Stager(device_backend, depth=2)
    dicts: dict[str, StringDictionary] = {}
    batches = [_batch(n, seed, dicts) for seed, n in enumerate([100, 3000, 0, 1, 5000, 7])]
    # stage all before landing any: slots are refilled (after their copies completed)
    # while earlier batches are still in flight; each must land as it was
    staged = [stager.stage(b) for b in batches]
    for b, s in zip(batches, staged, strict=True):
        landed = stager.land(s)
        assert landed.on_device == (device_backend.name == "cuda")
        host = landed.to_host()
        assert host.column_names == b.column_names
        for name in b.column_names:
            np.testing.assert_array_equal(host[name], b[name])
            if b.validity(name) is None:
                assert host.validity(name) is None
            else:
                np.testing.assert_array_equal(host.validity(name), b.validity(name))
        assert host.to_arrow().equals(b.to_arrow())
    assert stager.staged == 6
    assert stager.bytes == sum(
        b[n].nbytes + (v.nbytes if (v := b.validity(n)) is not None else 0)
        for b in batches for n in b.column_names)


def test_a_pipeline_stages_its_input(device_backend: Backend) -> None:
    rng = np.random.default_rng(3)
    n = 600
    table = pa.table({"ts": np.sort(rng.integers(0, 5_000, n)), "k": rng.integers(0, 4, n),
                      "v": rng.normal(size=n)})
    p = gs.Pipeline(engine=device_backend.name)
    s = p.source(gs.from_arrow(table, batch_rows=128), event_time="ts")
    out: list[pa.RecordBatch] = []
    s.key_by("k").window(gs.Tumbling(1000), name="w").agg(c=gs.count()).sink(
        gs.to_callback(out.append))
    stats = p.run()
    assert stats.bytes_staged == table.nbytes
    assert sum(pa.Table.from_batches(out)["c"].to_pylist()) == n
