"""Checkpoints at a URL (an object store, through fsspec): complete once meta.json is
written, the damaged or unfinished ones passed over, a run resumed from them."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.runtime.checkpoint import Checkpoint, CheckpointStore, RemoteCheckpointStore

fsspec = pytest.importorskip("fsspec")


def _url() -> str:
    return f"memory://gs-test-{uuid.uuid4().hex}/ck"


def test_a_checkpoint_is_complete_once_its_meta_is_written() -> None:
    url = _url()
    store = CheckpointStore(url, "p")
    assert isinstance(store, RemoteCheckpointStore)
    for seq in (1, 2):
        store.write(Checkpoint(seq, "p", {"s": [seq]}, {"op/x": np.arange(seq + 2)}))
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    # a run that died writing checkpoint 3: its state is there, its meta.json is not
    fs.pipe_file(f"/{root}/ckpt-000000003/state.arrow", b"partial")
    assert store.seqs() == [1, 2]
    ck = store.latest()
    assert ck is not None and ck.seq == 2 and ck.state_of("op")["x"].tolist() == [0, 1, 2, 3]
    # a damaged newest one: the one before it is restored
    fs.pipe_file(f"/{root}/ckpt-000000002/state.arrow", b"garbage")
    ck = store.latest()
    assert ck is not None and ck.seq == 1
    store.prune()  # keeps the newest two complete, drops the unfinished one
    assert store.seqs() == [1, 2] and not fs.exists(f"/{root}/ckpt-000000003")
    store.discard_after(1)
    assert store.seqs() == [1]
    with pytest.raises(PlanError, match="belongs to pipeline 'p', not 'q'"):
        CheckpointStore(url, "q").latest()


def test_a_run_resumes_from_checkpoints_at_a_url(tmp_path: Path) -> None:
    rows = 4_000
    rng = np.random.default_rng(3)
    data = {"ts": np.sort(rng.integers(0, 100_000, rows)),
            "k": rng.integers(0, 20, rows), "v": rng.random(rows)}

    def build(out: Path) -> gs.Pipeline:
        p = gs.Pipeline("url", engine="cpu")
        s = p.source(gs.from_arrow(data, batch_rows=250), event_time="ts",
                     watermark=gs.Watermark.bounded(100))
        (s.key_by("k").window(gs.Tumbling(5_000)).agg(n=gs.count(), total=gs.col("v").sum())
         .sink(gs.to_parquet(out)))
        return p

    build(tmp_path / "one").run()
    ck = gs.Checkpointing(f"file://{tmp_path}/ck", every_batches=3)
    first = build(tmp_path / "two").run(max_events=2_000, checkpoint=ck)
    assert first.stopped_early and first.checkpoints >= 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir())[-1].startswith("ckpt-")
    second = build(tmp_path / "two").run(checkpoint=ck)
    assert second.restored_checkpoint is not None
    a = pq.read_table(tmp_path / "one").to_pandas().sort_values(["k", "window_start"])
    b = pq.read_table(tmp_path / "two").to_pandas().sort_values(["k", "window_start"])
    assert a.n.tolist() == b.n.tolist() and len(a) > 0
    np.testing.assert_allclose(a.total.to_numpy(), b.total.to_numpy(), rtol=1e-9)


def test_a_url_without_its_store_package_is_a_clear_error() -> None:
    with pytest.raises(PlanError, match="is a URL, read through fsspec"):
        CheckpointStore("nosuchstore9://bucket/ck", "p")
