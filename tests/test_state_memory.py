"""State memory: what the stores hold (``state_bytes``), bytes per (key, window) state of
the paged windows, and sparse-then-dense HyperLogLog for ``approx_count_distinct``."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.backend import Backend, select_backend
from gpustream.expr import Agg, count
from gpustream.kernels.aggregate import hll_update
from gpustream.operators.window import AggSpec, WindowAggOp, WindowSpec
from gpustream.state.aggstate import HllState, UpdateContext, make_state, sparse_limit
from gpustream.state.dense import DenseTable
from gpustream.state.store_cpu_panes import CpuPaneStore
from gpustream.state.table import SlotTable
from tests.conftest import cudasim_on

# -- paged windows: bytes per (key, window) ----------------------------------------------


def _count_sum_op(shards: int = 1) -> WindowAggOp:
    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(), "window_end": pa.int64(),
                        "n": pa.int64(), "s": pa.int64()})
    spec = WindowSpec("w", ("k",), "ts", 1000, 1000, 0, 0, 0,
                      (AggSpec("n", count(), None, pa.int64()),
                       AggSpec("s", gs.col("v").sum(), pa.int64(), pa.int64())), schema, False)
    cpu = select_backend("cpu")
    return WindowAggOp(spec, cpu, store=CpuPaneStore(spec, cpu, shards=shards))


def _feed(op: WindowAggOp, keys: np.ndarray, window: int) -> None:
    """Events of ``keys`` in window ``window``, then the watermark 1 ms before it (which
    fires the windows two or more before)."""
    b = gs.Batch.from_arrow(pa.record_batch({"k": keys, "ts": np.full(keys.shape[0],
                                                                      window * 1000 + 5),
                                             "v": np.ones(keys.shape[0], dtype=np.int64)}))
    b.watermarks = np.full(keys.shape[0], window * 1000 - 1)
    op.process(b)
    op.on_watermark(window * 1000 - 1)


def _shards(op: WindowAggOp) -> list[Any]:
    assert isinstance(op.store, CpuPaneStore)
    return op.store.shards


def _op_bytes(op: WindowAggOp) -> int:
    """The operator's state bytes, summed from its shards (what its state_bytes sums)."""
    return sum(sh.table.state_bytes() + sh.pages.state_bytes()
               + sum(st.state_bytes() for st in sh.states) for sh in _shards(op))


def test_one_open_window_takes_one_page_and_a_key_table_at_most_three_quarters_full() -> None:
    """200,000 keys in one tumbling window, count and sum: one page of 64-byte rows and a
    key table with 4/3 to 10/3 slots per key: under 330 bytes per key, everything
    counted (before: four pages, a key table at most half full: 680-1,360 bytes)."""
    op = _count_sum_op()
    n = 200_000
    keys = np.random.default_rng(1).permutation(n).astype(np.int64)
    for part in np.array_split(keys, 7):
        _feed(op, part, 0)
    (shard,) = _shards(op)
    pages = shard.pages
    assert pages is not None and pages.live_keys == n and op.state_rows == n
    assert pages.pages == 1
    assert n / pages.capacity > 0.3  # at most 10/3 slots per key
    assert _op_bytes(op) / n < 330


def test_pages_are_added_as_windows_open() -> None:
    """One page per open window (a page has a row per key slot), one key table for all."""
    op = _count_sum_op()
    pages = _shards(op)[0].pages
    assert pages is not None

    def expected() -> int:
        assert pages is not None
        key_table = pages.capacity * (8 + 16 + 4)  # hash, key and null words, refs
        page = pages.capacity * (pages.width * 8 + 1 + 3) + 17  # rows, present, list; info
        return key_table + pages.pages * page + 64  # + rows' alignment

    keys = np.arange(5000, dtype=np.int64)
    _feed(op, keys, 0)
    assert pages.pages == 1 and pages.state_bytes() == expected()
    _feed(op, keys, 1)
    assert pages.pages == 2 and op.state_rows == 10_000
    assert pages.state_bytes() == expected()
    _feed(op, keys, 2)  # three open; then window 0 fires
    _feed(op, keys, 3)  # its page holds window 3; then window 1 fires
    assert pages.pages == 3 and op.state_rows == 10_000
    assert pages.state_bytes() == expected()


def test_state_bytes_is_what_the_state_holds() -> None:
    """Python's allocation tracer sees the stores' arrays: after the events are folded and
    the batches dropped, what the operator holds is what ``state_bytes`` reports."""
    warm = _count_sum_op(shards=2)  # compile the loops before tracing
    _feed(warm, np.arange(10, dtype=np.int64), 0)
    keys = np.random.default_rng(2).permutation(300_000).astype(np.int64)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        op = _count_sum_op(shards=2)
        for part in np.array_split(keys, 3):
            _feed(op, part, 0)
        _feed(op, keys[:1000], 1)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    reported = _op_bytes(op)
    assert reported > 10_000_000
    assert abs(held - reported) < 0.02 * reported, (held, reported)


def test_slot_and_dense_tables_report_their_arrays_after_growing() -> None:
    t = SlotTable(2, np, select_backend("cpu"))
    t.add_column("n", np.int64, 0)
    keys = np.random.default_rng(3).integers(0, 2**60, (2, 50_000)).astype(np.uint64)
    t.upsert(keys, np.arange(50_000))
    assert t.capacity >= 100_000
    assert t.state_bytes() == t.capacity * (8 + 4 + 16 + 8)
    d = DenseTable(select_backend("cpu"), meta={"state": (np.int8, 0)})
    d.add_column("n", np.int64, 0)
    d.reserve(5000)
    assert d.state_bytes() == d.capacity * 9 and d.capacity >= 5000


# -- approx_count_distinct: sparse, then dense --------------------------------------------


def _hll(backend: Backend, p: int = 12, groups: int = 4) -> tuple[HllState, Any]:
    """An approx_count_distinct state over ``groups`` new slots of a table."""
    xp = backend.xp
    table = SlotTable(1, xp, backend)
    st = make_state("a", Agg("approx_count_distinct", gs.col("v"), precision=p), pa.int64(),
                    pa.int64(), table)
    assert isinstance(st, HllState)
    slots, _ = table.upsert(xp.asarray(np.arange(groups, dtype=np.uint64).reshape(1, -1)),
                            xp.arange(groups, dtype=np.int64))
    st.init(slots, None, None, None)
    return st, slots


def _update(st: HllState, backend: Backend, slots: Any, which: np.ndarray,
            values: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Fold ``values[i]`` into slot ``slots[which[i]]``."""
    xp = backend.xp
    n = values.shape[0]
    ctx = UpdateContext(xp.zeros(n, dtype=np.int64), xp.arange(n, dtype=np.int64))
    st.update(slots[xp.asarray(which)], xp.arange(n, dtype=np.int64), xp.asarray(values),
              None if valid is None else xp.asarray(valid), ctx)


def _registers(st: HllState, backend: Backend, slots: Any) -> list[Any]:
    """Each slot's registers (host), or None while it is sparse."""
    rows = backend.to_host(st.rec_dense[st.col("row")[slots]])
    regs = backend.to_host(st.regs)
    return [None if r < 0 else regs[r].copy() for r in rows.tolist()]


def _values(rng: np.random.Generator, distinct: int, n: int) -> np.ndarray:
    """``n`` values drawn from ``distinct`` spread-out integers (each drawn at least once)."""
    pool = rng.choice(2**40, distinct, replace=False).astype(np.int64)
    return rng.permutation(np.concatenate([pool, rng.choice(pool, n - distinct)]))


def _windowed_distinct(table: pa.Table, p: int) -> pd.DataFrame:
    pipe = gs.Pipeline(engine="cpu")
    s = pipe.source(gs.from_arrow(table, batch_rows=777), event_time="ts",
                    watermark=gs.Watermark.bounded(0))
    out = s.key_by("k").window(gs.Tumbling(1000)).agg(
        a=gs.col("v").approx_count_distinct(p), d=gs.col("v").count_distinct()).collect()
    return out.to_pandas()


@pytest.mark.parametrize("p", [4, 12, 16])
def test_small_groups_are_counted_exactly(p: int) -> None:
    """Groups of up to ``sparse_limit`` distinct values (with repeats and nulls, over many
    batches): the exact count, as pandas counts it."""
    rng = np.random.default_rng(p)
    limit = sparse_limit(1 << p)
    sizes = [1, 2, 3, limit // 2, limit - 1, limit]
    parts = [pd.DataFrame({"k": k, "v": _values(rng, d, 3 * d + 5)})
             for k, d in enumerate(sizes)]
    df = pd.concat(parts).sample(frac=1, random_state=1)
    df["ts"] = np.arange(len(df)) % 900
    mask = rng.random(len(df)) < 0.1
    table = pa.table({"k": df["k"].to_numpy(), "ts": df["ts"].to_numpy(),
                      "v": pa.array(df["v"].to_numpy(), mask=mask)})
    got = _windowed_distinct(table, p).sort_values("k")
    want = df[~mask].groupby("k")["v"].nunique()
    assert got["a"].tolist() == want.loc[got["k"]].tolist()
    assert got["a"].tolist() == got["d"].tolist()


def test_big_groups_are_within_the_hyperloglog_error() -> None:
    """Past the sparse limit the registers estimate: within 4 standard errors
    (1.04 / sqrt(2**p)) of pandas' exact count, from just past the limit to 300,000."""
    rng = np.random.default_rng(7)
    sizes = [65, 300, 2_000, 9_000, 40_000, 300_000]
    for p in (12, 14):
        ks = np.concatenate([np.full(d + d // 3, k) for k, d in enumerate(sizes)])
        vs = np.concatenate([_values(rng, d, d + d // 3) for d in sizes])
        order = rng.permutation(ks.shape[0])
        table = pa.table({"k": ks[order], "ts": np.zeros(ks.shape[0], dtype=np.int64),
                          "v": vs[order]})
        got = _windowed_distinct(table, p).sort_values("k")
        true = got["d"].to_numpy()
        assert true.tolist() == sizes
        err = np.abs(got["a"].to_numpy() - true) / true
        assert err.max() <= 4 * 1.04 / np.sqrt(2**p), (p, err)
        assert (err > 0).any()  # the big ones are estimates


#: (distinct values of a, of b, shared): sparse + sparse staying sparse or turning dense,
#: dense + sparse, sparse + dense, dense + dense
MERGES = [(5, 7, 3), (40, 40, 10), (300, 10, 5), (10, 300, 5), (2000, 3000, 1000)]


def _merge_vs_whole(backend: Backend, seed: int) -> tuple[list[Any], Any, list[Any], Any]:
    """For each of :data:`MERGES`: group ``i`` gets a's values and group ``i + 5`` b's,
    then merged into group i; group ``i + 10`` gets a's and b's. All fed in three batches,
    interleaved. Returns the merged and the whole groups' registers and counts."""
    rng = np.random.default_rng(seed)
    st, slots = _hll(backend, 12, groups=15)
    which, values = [], []
    for i, (da, db, shared) in enumerate(MERGES):
        pool = rng.choice(2**50, da + db - shared, replace=False).astype(np.int64)
        a, b = pool[:da], pool[da - shared:]
        a = rng.permutation(np.concatenate([a, rng.choice(a, da)]))  # every value, repeats
        b = rng.permutation(np.concatenate([b, rng.choice(b, db)]))
        which += [np.full(a.shape[0], i), np.full(b.shape[0], i + 5),
                  np.full(a.shape[0] + b.shape[0], i + 10)]
        values += [a, b, np.concatenate([a, b])]
    w, v = np.concatenate(which), np.concatenate(values)
    for part in np.array_split(rng.permutation(w.shape[0]), 3):
        _update(st, backend, slots, w[part], v[part])
    st.merge(slots[:5], slots[5:10])
    merged, whole = slots[:5], slots[10:]
    return (_registers(st, backend, merged), backend.to_host(st.finalize(merged)[0]),
            _registers(st, backend, whole), backend.to_host(st.finalize(whole)[0]))


def _check_merges(backend: Backend) -> tuple[list[Any], Any]:
    regs_m, n_m, regs_w, n_w = _merge_vs_whole(backend, 5)
    assert n_m.tolist() == n_w.tolist()
    assert [r is None for r in regs_m] == [da + db - s <= 64 for da, db, s in MERGES]
    for rm, rw in zip(regs_m, regs_w, strict=True):
        assert (rm is None and rw is None) or np.array_equal(rm, rw)
    assert n_m[:1].tolist() == [9]  # sparse: exact
    return regs_m, n_m


def test_merge_equals_update_of_the_union() -> None:
    """merge(a, b) gives the state of one group fed a + b: the same exact count while
    sparse, the same registers once dense, whichever of the two was dense."""
    _check_merges(select_backend("cpu"))


def test_snapshots_restore_sparse_and_dense_groups() -> None:
    cpu = select_backend("cpu")
    rng = np.random.default_rng(11)
    st, slots = _hll(cpu, 12, groups=3)
    which = np.repeat([0, 1, 2], [30, 500, 5000])
    values = np.concatenate([_values(rng, 20, 30), _values(rng, 400, 500),
                             _values(rng, 4000, 5000)])
    _update(st, cpu, slots, which, values)
    assert isinstance(st.table, SlotTable)
    snap = st.snapshot_extra(slots, cpu.to_host)
    snap_table = st.table.snapshot(cpu.to_host)
    more = _values(rng, 100, 100)
    _update(st, cpu, slots, np.zeros(100, dtype=np.int64), more)  # group 0 turns dense
    want = st.finalize(slots)[0].tolist()

    table2 = SlotTable(1, np, select_backend("cpu"))
    st2 = make_state("a", st.agg, pa.int64(), pa.int64(), table2)
    assert isinstance(st2, HllState)
    new = table2.restore(snap_table, cpu.to_device)
    st2.restore_extra(snap, new, cpu.to_device)
    _update(st2, cpu, new, np.zeros(100, dtype=np.int64), more)
    assert st2.finalize(new)[0].tolist() == want
    assert all(r is not None for r in _registers(st2, cpu, new))


def test_snapshots_from_before_sparse_groups_restore() -> None:
    """A checkpoint written before sparse groups holds int32 registers for every group:
    it restores, every group dense with its registers."""
    cpu = select_backend("cpu")
    m = 1 << 12
    regs = np.zeros((3, m), dtype=np.uint8)
    hll_update(regs, np.repeat([0, 1, 2], [10, 1000, 50_000]), np.arange(51_010),
               np.arange(51_010, dtype=np.uint64) * np.uint64(7919), None, 12, cpu)
    old = {"regs": regs.astype(np.int32)}
    table = SlotTable(1, np, select_backend("cpu"))
    st = make_state("a", Agg("approx_count_distinct", gs.col("v")), pa.int64(), pa.int64(),
                    table)
    assert isinstance(st, HllState)
    slots, _ = table.upsert(np.arange(3, dtype=np.uint64).reshape(1, -1), np.arange(3))
    st.restore_extra(old, slots, cpu.to_device)
    assert all(np.array_equal(got, want)
               for got, want in zip(_registers(st, cpu, slots), regs, strict=True))
    est = st.finalize(slots)[0]
    assert int(est[0]) == 10  # a few values: the estimate is exact
    assert abs(int(est[1]) - 1000) <= 20 and abs(int(est[2]) - 50_000) <= 1000


def test_a_small_group_takes_hundreds_of_bytes_not_registers() -> None:
    """20,000 open groups of at most 5 values: under 1 KiB each with the table (before:
    16 KiB of int32 registers each, 32 KiB with the pool's room to grow); 50 big groups:
    one byte per register each, plus room to grow."""
    cpu = select_backend("cpu")
    rng = np.random.default_rng(2)
    g = 20_000
    st, slots = _hll(cpu, 12, groups=g)
    which = rng.integers(0, g, 60_000)
    _update(st, cpu, slots, which, which * 1000 + rng.integers(0, 5, which.shape[0]))
    assert all(r is None for r in _registers(st, cpu, slots[:100]))
    per_group = (st.table.state_bytes() + st.state_bytes()) / g
    assert per_group < 1024, per_group
    big, bslots = _hll(cpu, 12, groups=50)
    which = np.repeat(np.arange(50), 2000)
    _update(big, cpu, bslots, which, rng.integers(0, 2**50, which.shape[0]))
    assert big.regs.itemsize == 1 and big.regs.shape[1] == 4096
    assert big.state_bytes() <= 2 * 50 * 4096 + 100_000


# -- the GPU twin ---------------------------------------------------------------------


@pytest.mark.cudasim
def test_hll_kernel_cpu_equals_cudasim() -> None:
    if not cudasim_on():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1")
    rng = np.random.default_rng(4)
    n = 3000
    rows = rng.integers(-1, 5, n)
    bits = rng.integers(0, 2**63, n).astype(np.uint64)
    valid = rng.random(n) < 0.9
    cpu = np.zeros((5, 64), dtype=np.uint8)
    sim = np.zeros((5, 64), dtype=np.uint8)
    hll_update(cpu, rows, np.arange(n), bits, valid, 6, select_backend("cpu"))
    hll_update(sim, rows, np.arange(n), bits, valid, 6, select_backend("cudasim"))
    assert (cpu > 0).sum() > 200
    assert np.array_equal(cpu, sim)


@pytest.mark.cudasim
def test_sparse_and_dense_groups_cpu_equal_cudasim() -> None:
    if not cudasim_on():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1")
    regs_cpu, n_cpu = _check_merges(select_backend("cpu"))
    regs_sim, n_sim = _check_merges(select_backend("cudasim"))
    assert n_cpu.tolist() == n_sim.tolist()
    for a, b in zip(regs_cpu, regs_sim, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
