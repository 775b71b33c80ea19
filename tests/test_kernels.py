"""Kernels: CPU twin == CUDA kernel (simulator, real GPU); every kernel compiles to PTX."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.backend import select_backend
from gpustream.kernels.hashing import hash_rows, widen_keys
from gpustream.kernels.ptx import compile_kernel, load_all_kernels
from gpustream.kernels.registry import CudaKernel

ALL_KERNELS = load_all_kernels()
CPU = select_backend("cpu")
INTEGER_ONLY = {"_hash_rows_cuda", "_upsert_cuda", "_block_max_cuda", "_block_scan_cuda",
                "_assign_cuda", "_sessionize_cuda", "_count_cuda", "_hll_cuda", "_lookup_cuda"}


def test_integer_only_list_names_real_kernels() -> None:
    names = {k.name.rsplit(".", 1)[-1] for k in ALL_KERNELS}
    assert names >= INTEGER_ONLY


def _keys(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(-(2**62), 2**62, n),
        rng.integers(0, 7, n).astype(np.int32),
        rng.normal(size=n),
        rng.random(n) < 0.5,
    ]


def test_hash_is_deterministic_and_spreads() -> None:
    cols = [np.arange(200_000, dtype=np.int64)]
    h = hash_rows(widen_keys(cols, np), CPU)
    assert len(np.unique(h)) == len(h)  # 64-bit hashes of distinct keys: no collisions
    assert np.array_equal(h, hash_rows(widen_keys(cols, np), CPU))
    # low bits (used to pick hash-table slots) are close to uniform
    counts = np.bincount((h & np.uint64(1023)).astype(np.int64), minlength=1024)
    assert counts.min() > 100 and counts.max() < 300
    # keys that differ only in their high 32 bits spread over the low bits too
    high = [(np.arange(100_000, dtype=np.int64) << 32) + 7, np.zeros(100_000, np.int64)]
    hh = hash_rows(widen_keys(high, np), CPU)
    counts = np.bincount((hh & np.uint64(1023)).astype(np.int64), minlength=1024)
    assert counts.min() > 40 and counts.max() < 170
    # the order of key columns matters
    a, b = np.arange(50), np.arange(50)[::-1].copy()
    assert not np.array_equal(hash_rows(widen_keys([a, b], np), CPU),
                              hash_rows(widen_keys([b, a], np), CPU))


def test_hash_kernel_matches_cpu_twin(device_backend: gs.Backend) -> None:
    backend = device_backend
    n = 700 if backend.name == "cudasim" else 100_000
    cols = _keys(n)
    want = hash_rows(widen_keys(cols, np), CPU)
    xp = backend.xp
    dev_cols = [xp.asarray(c) for c in cols]
    got = backend.to_host(hash_rows(widen_keys(dev_cols, xp), backend))
    assert np.array_equal(got, want)


def test_every_kernel_is_registered_once() -> None:
    names = [k.name for k in ALL_KERNELS]
    assert "gpustream.kernels.hashing._hash_rows_cuda" in names
    assert len(names) == len(set(names))


@pytest.mark.ptx
@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=lambda k: k.name.rsplit(".", 1)[-1])
def test_kernel_compiles_to_ptx(kernel: CudaKernel, cc: tuple[int, int]) -> None:
    for sig in kernel.signatures:
        ptx = compile_kernel(kernel, sig, cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx
        assert ".entry" in ptx
        if kernel.name.rsplit(".", 1)[-1] in INTEGER_ONLY:
            # a float instruction in these means numba promoted a uint64/int64 mix to float
            assert not re.search(r"\b(cvt\.rn\.f64|[a-z]+\.f64)\b", ptx), kernel.name


def test_sessions_before_the_first_watermark_merge() -> None:
    """Regression: with the watermark at -infinity (INT64_MIN), end - watermark overflowed
    and a session looked purged, so the next event opened a second session."""
    from gpustream.kernels.sessions import sessionize

    store = {k: np.full(4, -1, np.int64) for k in ("start", "end", "next", "into", "kslot", "rev")}
    store.update({k: np.zeros(4, np.int8) for k in ("state", "dirty", "emit")})
    head = np.full(1, -1, np.int64)
    ts = np.array([100, 105])
    wm = np.full(2, np.iinfo(np.int64).min)
    sess, rounds = np.full(2, -1), np.full(2, -1)
    sessionize(np.array([0]), np.array([2]), np.arange(2), ts, wm, np.zeros(2, np.int64), 10,
               5, True, 0, 0, head, store, sess, rounds, CPU)
    assert sess.tolist() == [0, 0]
    assert (int(store["start"][0]), int(store["end"][0])) == (100, 115)


def _watermark_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = rng.integers(-50_000, 50_000, 5000)
    return ts, rng.random(5000) > 0.1


def test_cpu_watermarks_follow_their_definition() -> None:
    """One pass: max of the earlier valid times minus the delay, INT64_MIN before any."""
    from gpustream.kernels.scan import INT64_MIN, watermarks_cpu

    ts, valid = _watermark_data(4)
    wm, running = watermarks_cpu(ts, valid, int(INT64_MIN), 700)
    seen = np.maximum.accumulate(np.where(valid, ts, INT64_MIN))
    before = np.concatenate([[INT64_MIN], seen[:-1]])
    assert (wm == np.where(before == INT64_MIN, INT64_MIN, before - 700)).all()
    assert running == int(seen[-1])
    wm2, _ = watermarks_cpu(ts[1000:], None, int(seen[999]), 700)  # carried in, no nulls
    assert wm2[0] == seen[999] - 700 and (wm2[1:] == np.maximum.accumulate(
        np.maximum(ts[1000:-1], seen[999])) - 700).all()


def test_cpu_watermarks_equal_the_device_scan(device_backend: gs.Backend) -> None:
    """The CPU's one pass and the device's scan-then-subtract give the same watermarks."""
    from gpustream.operators.watermark import WatermarkOp

    ts, valid = _watermark_data(5)

    batch = gs.Batch.from_arrow(pa.record_batch({"ts": pa.array(ts, mask=~valid)}))
    outs = []
    from gpustream.backend import select_backend

    for be in (select_backend("cpu"), device_backend):
        op = WatermarkOp("ts", 700, be)
        got = op.process(batch.to_device(be) if be.is_device else batch)[0].watermarks
        outs.append((be.to_host(got), op.running))
    assert (outs[0][0] == outs[1][0]).all() and outs[0][1] == outs[1][1]


@pytest.mark.ptx
def test_the_upsert_kernel_fences_and_reads_claimed_keys_coherently() -> None:
    """The hash table's reader side (memory-model defects never show in the simulator):
    the writer fences between the key words and the ready flag (release), the reader
    fences after reading the flag (acquire) and reads the key words with atomics, not
    plain loads an SM's L1 could serve stale; the kernel CASes only where a slot looked
    empty, so the PTX also has a plain load of the slot's hash."""
    kernel = next(k for k in load_all_kernels() if k.name.endswith("hashtable._upsert_cuda"))
    ptx = compile_kernel(kernel, kernel.signatures[0], (9, 0))
    assert len(re.findall(r"\bmembar\.gl\b|\bfence\.", ptx)) >= 2
    assert len(re.findall(r"atom\.global\.add\.u64", ptx)) >= 2  # n_retry and the key words
    assert re.search(r"ld\.global\.u64", ptx) and "atom.global.cas" in ptx


#: the kernel modules whose CUDA kernels launch only through Backend.launch (issue 15)
LAUNCHED = ("aggregate", "hashing", "hashtable", "join", "panes", "scan", "sessions", "windows")


def test_every_cuda_kernel_of_the_launched_modules_is_a_registered_pair() -> None:
    """Each CUDA kernel of these modules runs through a KernelPair (so Backend.launch
    reaches it), and each pair's CUDA side is registered (so the PTX step compiles it)."""
    import importlib
    import inspect

    from gpustream.kernels.registry import KERNELS, PAIRS

    paired = {id(p.cuda) for p in PAIRS}
    registered = {id(k) for k in KERNELS}
    assert all(id(p.cuda) in registered for p in PAIRS)
    assert len(paired) == len(PAIRS)  # one pair per kernel
    for name in LAUNCHED:
        module = importlib.import_module(f"gpustream.kernels.{name}")
        kernels = [v for v in vars(module).values() if isinstance(v, CudaKernel)]
        assert kernels, name
        assert all(id(k) in paired for k in kernels), name
        source = inspect.getsource(module)
        # launches and array modules come from the backend, not from the wrapper
        assert not re.search(r"_cuda\[|launch_config\(|__import__\(", source), name
    for p in PAIRS:
        if p.cpu is not None:  # a CPU twin is an njit function
            assert hasattr(p.cpu, "py_func"), p.name
