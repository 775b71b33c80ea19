"""Host-to-device staging through pinned buffers on a copy stream (cudasim, cuda)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from numba import cuda as _numba_cuda

import gpustream as gs
from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.staging import Stager
from gpustream.probe import probe_gpu

cuda: Any = _numba_cuda  # numba.cuda (the simulator's under cudasim); typed loosely for mypy


def _batch(n: int, seed: int, dicts: dict[str, StringDictionary]) -> Batch:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    return Batch.from_arrow(pa.record_batch({
        "ts": pa.array(rng.integers(0, 10**12, n), pa.timestamp("ms")),
        "v": pa.array(values, mask=rng.random(n) < 0.2),
        "k": pa.array(rng.choice(["a", "b", "c"], n)),
        "flag": pa.array(rng.random(n) < 0.5),
    }), dicts)


def _same(landed: Batch, b: Batch, backend: Backend) -> None:
    assert landed.on_device == (backend.name == "cuda")
    host = landed.to_host()
    assert host.column_names == b.column_names
    for name in b.column_names:
        np.testing.assert_array_equal(host[name], b[name])
        if b.validity(name) is None:
            assert host.validity(name) is None
        else:
            np.testing.assert_array_equal(host.validity(name), b.validity(name))
    assert host.to_arrow().equals(b.to_arrow())


def test_staged_batches_land_unchanged_while_buffers_are_reused(device_backend: Backend) -> None:
    stager = Stager(device_backend, depth=2)
    dicts: dict[str, StringDictionary] = {}
    batches = [_batch(n, seed, dicts) for seed, n in enumerate([100, 3000, 0, 1, 5000, 7])]
    # stage all before landing any: slots are refilled (after their copies completed)
    # while earlier batches are still in flight; each must land as it was
    staged = [stager.stage(b) for b in batches]
    for b, s in zip(batches, staged, strict=True):
        _same(stager.land(s), b, device_backend)
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


def _pinned(stager: Stager) -> list[list[int]]:
    """Where each slot's pinned buffers are."""
    return [[buf.ctypes.data for buf in slot.buffers] for slot in stager.slots]


def test_pinned_buffers_are_kept_across_batches_and_grow_only_when_outgrown(
        device_backend: Backend) -> None:
    stager = Stager(device_backend, depth=2)
    dicts: dict[str, StringDictionary] = {}

    def run(rows: list[int], seed: int) -> None:
        for i, n in enumerate(rows):
            b = _batch(n, seed + i, dicts)
            _same(stager.land(stager.stage(b)), b, device_backend)

    run([20_000, 20_000], 0)  # both slots get their buffers (8-byte columns: 256 KiB)
    first, allocated = _pinned(stager), stager.pinned_allocations
    assert allocated == sum(len(slot.buffers) for slot in stager.slots)
    # steady state, and batches larger than the first that still fit: the same buffers
    run([20_000, 25_000, 32_768, 20_000, 1_000, 30_000] * 3, 10)
    assert _pinned(stager) == first
    assert stager.pinned_allocations == allocated
    # a batch that does not fit grows its slot's 8-byte columns' buffers, once
    run([40_000], 100)
    grown = stager.pinned_allocations - allocated
    assert grown > 0
    run([40_000, 40_000, 33_000, 10], 200)
    assert stager.pinned_allocations - allocated == 2 * grown  # the other slot, once


def _cuda_backend() -> Backend:
    probe = probe_gpu()
    if not probe.ok:
        pytest.skip(f"cuda case needs a working NVIDIA GPU: {probe.reason}")
    return gs.select_backend("cuda")


@pytest.mark.cuda
def test_staging_takes_no_new_device_memory_in_steady_state() -> None:
    backend = _cuda_backend()
    import cupy

    from gpustream.devicepool import current_pool

    pool = current_pool()
    assert pool is not None
    if pool.kind != "cupy":
        pytest.skip(f"{pool.describe()}: cupy's memory hooks see only cupy's pool")
    stager = Stager(backend, depth=2)
    dicts: dict[str, StringDictionary] = {}
    batches = [_batch(50_000, seed, dicts) for seed in range(24)]

    def push(b: Batch) -> None:
        landed = stager.land(stager.stage(b))
        assert stager.pending_blocks == 0  # the batch before's blocks are back in the pool
        assert float(landed["v"].sum()) == pytest.approx(float(b["v"].sum()))
        del landed  # its blocks retire, behind an event on the compute stream
        cupy.cuda.Device().synchronize()  # the compute is done: that event too

    for b in batches[:4]:  # warm up: the pool and the pinned buffers fill
        push(b)
    mempool = cupy.get_default_memory_pool()
    held, pinned = mempool.total_bytes(), stager.pinned_allocations
    driver_allocs: list[int] = []

    class Seen(cupy.cuda.MemoryHook):
        name = "staging-steady-state"

        def alloc_postprocess(self, **kw: Any) -> None:  # the pool asks cudaMalloc
            driver_allocs.append(kw["mem_size"])

    with Seen():
        for b in batches[4:]:
            push(b)
    assert driver_allocs == []
    assert mempool.total_bytes() == held
    assert stager.pinned_allocations == pinned


def _slow_sum(x, out):  # a CUDA kernel (one thread): sleeps ~0.2 s, then reads x
    if cuda.grid(1) == 0:
        for _ in range(2000):
            cuda.nanosleep(100_000)
        total = 0
        for i in range(x.size):
            total += x[i]
        out[0] = total


@pytest.mark.cuda
def test_a_landed_columns_block_is_not_reused_while_a_kernel_still_reads_it() -> None:
    backend = _cuda_backend()
    import cupy

    slow_sum = cuda.jit(_slow_sum)
    n = 1 << 16
    stager = Stager(backend, depth=2)
    ones = Batch.from_arrow(pa.record_batch({"x": np.ones(n, np.int64)}))
    twos = Batch.from_arrow(pa.record_batch({"x": np.full(n, 2, np.int64)}))
    out = cupy.zeros(1, cupy.int64)
    landed = stager.land(stager.stage(ones))
    slow_sum[1, 32](landed["x"], out)  # queued on the compute stream; returns at once
    del landed  # the column's last reference: its block retires while the kernel runs
    # the same size again, copied on the copy stream that does not wait for compute: were
    # the block back in the pool, this copy would overwrite it under the sleeping kernel
    second = stager.land(stager.stage(twos))
    assert int(out.get()[0]) == n
    assert int(second["x"].sum()) == 2 * n
