"""The CPU join indexes (gpustream.kernels.join_index) against plain Python/pandas
references on seeded random data: the key -> dense id map, the window, interval and
session indexes, and the join operators' results whatever the batching."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.kernels.join_index import (
    IntervalIndex,
    KeyIndex,
    SessionIndex,
    WindowShards,
    last_of_each,
    window_on_time,
)


def _words(rows: list[tuple[int, ...]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint64).reshape(len(rows), -1).T.copy()


@pytest.mark.parametrize("key_words", [1, 2])
def test_key_index_matches_a_dict_through_inserts_deletes_and_growth(key_words: int) -> None:
    rng = np.random.default_rng(key_words)
    ix = KeyIndex(key_words, capacity=16)
    ref: dict[tuple[int, ...], int] = {}
    for _ in range(60):
        rows = [tuple(int(x) for x in rng.integers(0, 300, key_words)) for _ in range(200)]
        valid = rng.random(200) > 0.1
        ids, new = ix.upsert(_words(rows), valid)
        seen: set[tuple[int, ...]] = set()
        for r, g, nw, ok in zip(rows, ids.tolist(), new.tolist(), valid.tolist(), strict=True):
            if not ok:
                assert g == -1
                continue
            if r in ref:
                assert g == ref[r] and not nw
            else:
                assert nw and r not in seen and g not in ref.values()
                ref[r] = g
            seen.add(r)
        gone = rng.choice(len(ref), size=min(len(ref), 70), replace=False)
        dead = [list(ref)[j] for j in gone]
        ix.delete(np.array([ref.pop(k) for k in dead], dtype=np.int64))
        assert ix.count == len(ref)
        probe = list(ref) + dead + [(999,) * key_words]
        want = [ref.get(k, -1) for k in probe]
        assert ix.find(_words(probe)).tolist() == want
        if ref:
            held = np.array(sorted(ref.values()))
            assert ix.alive().tolist() == held.tolist()
            keys = ix.keys_of(held)
            back = {tuple(int(x) for x in keys[:, j]): int(g) for j, g in enumerate(held)}
            assert back == ref
    assert ix.capacity > 16  # it grew, and deleted keys' ids were handed out again
    assert ix.ids_used < 60 * 200


def test_a_large_probe_splits_between_threads_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 50_000, (1, 400_000)).astype(np.uint64)
    ix = KeyIndex(1)
    ix.upsert(keys[:, ::3])
    alive = rng.random(ix.id_capacity) > 0.2
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", "1")
    one = ix.find(keys, alive=alive)
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", "4")
    assert (ix.find(keys, alive=alive) == one).all()
    held = {int(k): int(g) for k, g in zip(keys[0, ::3], ix.upsert(keys[:, ::3])[0], strict=True)}
    want = [held[k] if k in held and alive[held[k]] else -1 for k in keys[0].tolist()]
    assert one.tolist() == want


def test_last_of_each_and_window_lateness_match_numpy() -> None:
    rng = np.random.default_rng(9)
    ids = rng.integers(-1, 40, 500)
    got = last_of_each(ids, 40)
    want = np.zeros(500, dtype=bool)
    for g in set(ids.tolist()) - {-1}:
        want[np.flatnonzero(ids == g)[-1]] = True
    assert (got == want).all()
    ts = rng.integers(-5_000, 5_000, 1000)
    wm = ts + rng.integers(-3_000, 3_000, 1000)
    keep, late = window_on_time(ts, wm, 1000, 250, 30)
    last = ts - (ts - 30) % 250
    assert (keep == (last + 1000 > wm)).all() and late == int((~keep).sum())


def _window_pairs(rows: list[pd.DataFrame], size: int, slide: int, offset: int,
                  fires: list[int]) -> Counter[tuple[int, int, int]]:
    """Every (left row, right row, window start) of equal key in one window of both rows,
    for the windows the fires close (rows arrive before the fire that follows them; a
    row's windows ended by its own watermark are skipped)."""
    parts = []
    for side, df in enumerate(rows):
        for j in range(size // slide):
            start = df.ts - (df.ts - offset) % slide - j * slide
            ok = start + size > df.wm
            parts.append(df[ok].assign(start=start[ok], side=side))
    a = pd.concat(parts)
    closed = max(fires)
    a = a[a.start + size <= closed]
    m = a[a.side == 0].merge(a[a.side == 1], on=["k1", "k2", "start"], suffixes=("", "_r"))
    return Counter(zip(m.row.tolist(), m.row_r.tolist(), m.start.tolist(), strict=True))


@pytest.mark.parametrize(("size", "slide", "shards"), [(100, 100, 1), (100, 25, 2), (90, 30, 4)])
def test_window_shards_pair_what_a_merge_pairs(size: int, slide: int, shards: int) -> None:
    rng = np.random.default_rng(size + shards)
    ix = WindowShards(2, size, slide, offset=7, nshards=shards)
    frames: list[list[pd.DataFrame]] = [[], []]
    got: Counter[tuple[int, int, int]] = Counter()
    n = [0, 0]
    now = 0
    fires = [-(2**40)]
    for step in range(40):
        now += int(rng.integers(0, 60))
        side = int(rng.integers(0, 2))
        m = int(rng.integers(0, 300))
        df = pd.DataFrame({"ts": now + rng.integers(-80, 80, m), "k1": rng.integers(0, 9, m),
                           "k2": rng.integers(0, 2, m), "wm": now - 100 - rng.integers(0, 50, m),
                           "row": n[side] + np.arange(m)})
        keys = np.stack([df.k1.to_numpy(), df.k2.to_numpy()]).astype(np.uint64)
        ix.insert(side, keys, df.ts.to_numpy(), df.wm.to_numpy(), n[side])
        frames[side].append(df)
        n[side] += m
        if step % 3 == 2:
            fires.append(now - 150)
            for li, ri, starts in ix.fire(now - 150, chunk=64):
                assert li.shape[0] <= 64 or (li == li[0]).all()  # chunks of whole rows
                got.update(zip(li.tolist(), ri.tolist(), starts.tolist(), strict=True))
    rows = [pd.concat(f) for f in frames]
    assert got == _window_pairs(rows, size, slide, 7, fires)
    # what is still held: the assignments of the windows no fire closed, row by row
    held = sorted(zip(*(x.tolist() for x in ix.held_entries(0)[::2]), strict=True))
    left = rows[0]
    want = []
    for j in range(size // slide):
        start = left.ts - (left.ts - 7) % slide - j * slide
        ok = (start + size > left.wm) & (start + size > max(fires))
        want += list(zip(left.row[ok].tolist(), start[ok].tolist(), strict=True))
    assert held == sorted(want) and ix.held == len(want) + len(ix.held_entries(1)[0])
    # every row below the lowest one held may go; the rows keep their numbers
    for side in (0, 1):
        held_rows = ix.held_entries(side)[0]
        assert ix.first_row(side) == (held_rows.min() if held_rows.shape[0] else None)
    first = ix.first_row(0)
    assert first is not None and first > 0


def test_a_hot_key_is_paired_in_chunks_of_whole_left_rows() -> None:
    rng = np.random.default_rng(2)
    ix = WindowShards(1, 100, 100, 0, nshards=2)
    ix.insert(0, np.zeros((1, 3000), np.uint64), rng.integers(0, 100, 3000), None, 0)
    ix.insert(1, np.zeros((1, 2000), np.uint64), rng.integers(0, 100, 2000), None, 0)
    chunks = ix.fire(100, chunk=500)  # one left row's 2,000 pairs do not fit in 500
    assert all(int(li.shape[0]) == 2000 and (li == li[0]).all() for li, _, _ in chunks)
    pairs = Counter((int(a), int(b)) for li, ri, _ in chunks
                    for a, b in zip(li.tolist(), ri.tolist(), strict=True))
    assert len(pairs) == 3000 * 2000 and set(pairs.values()) == {1}
    assert ix.held == 0


def test_interval_index_pairs_what_brute_force_pairs() -> None:
    rng = np.random.default_rng(3)
    ix = IntervalIndex(1, lower=-30, upper=50)
    stored: list[list[tuple[int, int, int]]] = [[], []]  # (row, key, ts)
    evicted = -(2**63)
    for step in range(60):
        side = step % 2
        m = int(rng.integers(0, 40))
        ts = step * 20 + rng.integers(-40, 40, m)
        keys = rng.integers(0, 5, m).astype(np.uint64)
        kids = ix.append(side, keys[None, :], ts)
        base = len(stored[side])
        got: Counter[tuple[int, int]] = Counter()
        for p, b in ix.probe(side, kids, ts, chunk=16):
            got.update(zip((p + base).tolist(), b.tolist(), strict=True))
        want: Counter[tuple[int, int]] = Counter()
        for i in range(m):
            for b, k, t in stored[1 - side]:
                held = (t + 50 if side == 1 else t + 30) >= evicted
                d = (t - ts[i]) if side == 0 else (ts[i] - t)
                if k == keys[i] and held and -30 <= d <= 50:
                    want[(base + i, b)] += 1
        assert got == want
        stored[side] += [(base + i, int(keys[i]), int(ts[i])) for i in range(m)]
        if step % 7 == 6:
            evicted = step * 20 - 60
            ix.evict(evicted)
        if step % 20 == 19:  # compacting renumbers: keep the reference's numbers in step
            keeps = ix.compact()
            for s in (0, 1):
                kept = [r for r, k in zip(stored[s], keeps[s].tolist(), strict=True) if k]
                stored[s] = [(j, k, t) for j, (_, k, t) in enumerate(kept)]
                off = 50 if s == 0 else 30
                assert all(t + off >= evicted for _, _, t in stored[s])
    assert ix.held == sum(len(s) for s in stored) - sum(
        1 for s, off in ((0, 50), (1, 30)) for _, _, t in stored[s] if t + off < evicted)


def _sessions(events: list[tuple[int, int, int, int]], gap: int) -> dict[int, tuple[int, int]]:
    """Row (side * 10**6 + row) -> (first, last + gap) of its session, by brute force."""
    out = {}
    by_key: dict[int, list[tuple[int, int]]] = {}
    for side, row, key, t in events:
        by_key.setdefault(key, []).append((t, side * 10**6 + row))
    for rows in by_key.values():
        rows.sort()
        begin = 0
        for j in range(1, len(rows) + 1):
            if j == len(rows) or rows[j][0] - rows[j - 1][0] >= gap:
                for _, rid in rows[begin:j]:
                    out[rid] = (rows[begin][0], rows[j - 1][0] + gap)
                begin = j
    return out


def test_session_index_forms_the_sessions_brute_force_forms() -> None:
    rng = np.random.default_rng(11)
    gap = 25
    ix = SessionIndex(1, gap)
    events: list[tuple[int, int, int, int]] = []
    n = [0, 0]
    got: Counter[tuple[int, int, int, int]] = Counter()
    wm = -(2**62)
    for step in range(50):
        side = int(rng.integers(0, 2))
        m = int(rng.integers(0, 30))
        ts = step * 15 + rng.integers(0, 60, m)
        keep = ts >= wm  # late rows never reach the index (the operator drops them)
        ts = ts[keep]
        kw = np.asarray(rng.integers(0, 4, ts.shape[0]), dtype=np.uint64)
        ix.insert(side, kw[None, :], ts, n[side])
        events += [(side, n[side] + i, int(kw[i]), int(ts[i])) for i in range(ts.shape[0])]
        n[side] += ts.shape[0]
        if step % 4 == 3:
            wm = step * 15 - 30
            for li, ri, first, end in ix.fire(wm, chunk=8):
                got.update(zip(li.tolist(), ri.tolist(), first.tolist(), end.tolist(),
                               strict=True))
    sess = _sessions(events, gap)
    key = {(side, row): k for side, row, k, _ in events}
    by_session: dict[tuple[int, int, int], list[int]] = {}  # (key, first, end) -> right rows
    for side, row, k, _ in events:
        if side:
            by_session.setdefault((k, *sess[10**6 + row]), []).append(row)
    want: Counter[tuple[int, int, int, int]] = Counter()
    for side, row, k, _ in events:
        first, end = sess[row] if not side else (0, 0)
        if side or end > wm:
            continue
        for row2 in by_session.get((k, first, end), []):
            want[(row, row2, first, end)] += 1
    assert key  # (every row has its key)
    assert got == want and len(want) > 20
    # the rows still held are those of the sessions not yet ended
    rows, _ = ix.held_rows(0)
    assert sorted(rows.tolist()) == sorted(r for s, r, _, _ in events if s == 0
                                           and sess[r][1] > wm)


# -- the operators: the result does not depend on batching ------------------------------------

def _two(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for m in (n, n * 3 // 4):
        ts = np.sort(rng.integers(0, 20_000, m)) + rng.integers(0, 300, m)
        out.append(pd.DataFrame({"id": np.arange(m, dtype=np.int64),
                                 "k": pd.Series(rng.integers(0, 8, m)).astype("Int64")
                                 .mask(rng.random(m) < 0.03),
                                 "ts": ts.astype(np.int64)}))
    return out[0], out[1]


def _run(left: pd.DataFrame, right: pd.DataFrame, rows: tuple[int, int],
         window: Any) -> list[tuple[int, ...]]:
    p = gs.Pipeline(engine="cpu")
    wm = gs.Watermark.bounded(200)
    a = p.source(gs.from_arrow(pa.Table.from_pandas(left, preserve_index=False),
                               batch_rows=rows[0]), event_time="ts", watermark=wm, name="l")
    b = p.source(gs.from_arrow(pa.Table.from_pandas(right, preserve_index=False),
                               batch_rows=rows[1]), event_time="ts", watermark=wm, name="r")
    out = a.window_join(b, on="k", window=window).collect()
    return sorted(zip(*(out[c].to_pylist() for c in ("id", "id_right", "window_start",
                                                      "window_end")), strict=True))


_LEFT, _RIGHT = _two(500, seed=21)
_WANT: dict[str, list[tuple[int, ...]]] = {}


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["tumbling", "session"]), st.sampled_from([1, 7, 1000]),
       st.sampled_from([5, 64, 65536]), st.sampled_from(["1", "2"]))
def test_tumbling_and_session_joins_do_not_depend_on_batching_or_threads(
        window: str, left_rows: int, right_rows: int, threads: str) -> None:
    import os

    assigner = gs.Tumbling(1000) if window == "tumbling" else gs.Session(60)
    if window not in _WANT:
        _WANT[window] = _run(_LEFT, _RIGHT, (100_000, 100_000), assigner)
        assert len(_WANT[window]) > 100
    old = os.environ.get("GPUSTREAM_CPU_THREADS")
    os.environ["GPUSTREAM_CPU_THREADS"] = threads
    try:
        assert _run(_LEFT, _RIGHT, (left_rows, right_rows), assigner) == _WANT[window]
    finally:
        if old is None:
            del os.environ["GPUSTREAM_CPU_THREADS"]
        else:
            os.environ["GPUSTREAM_CPU_THREADS"] = old


def drop_at_every_chance(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make window joins drop the rows below the lowest one held at every chance (not
    only once there are COMPACT_AFTER of them); returns the list of how many rows each
    drop took, filled as they happen."""
    from gpustream.operators import join as join_op

    drops: list[int] = []
    drop = join_op._Store.drop_before

    def counted(store: Any, first: int) -> None:
        drops.append(first - store.base)
        drop(store, first)
    monkeypatch.setattr(join_op, "COMPACT_AFTER", 1)
    monkeypatch.setattr(join_op._Store, "drop_before", counted)
    return drops


@pytest.mark.parametrize("window", [gs.Tumbling(1000), gs.Sliding(1000, 250)])
def test_dropping_the_rows_no_window_holds_changes_no_pair(
        window: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # out-of-order rows in small batches, rows dropped at every chance: the same pairs
    # as a run that never drops a row
    left, right = _two(3000, seed=5)
    want = _run(left, right, (100_000, 100_000), window)
    drops = drop_at_every_chance(monkeypatch)
    assert _run(left, right, (37, 53), window) == want and len(want) > 1000
    assert len(drops) > 20 and sum(drops) > 2000


def test_a_failing_task_still_waits_for_the_others() -> None:
    # the shards' tasks touch the index's arrays: none may still run once the call is
    # over, even where another one failed
    import time

    from gpustream.kernels.join_index import _each

    done: list[int] = []

    def task(x: int) -> int:
        if x == 1:
            raise ValueError("a shard failed")
        if x == 2:
            time.sleep(0.2)
            done.append(x)
        return x
    with pytest.raises(ValueError, match="a shard failed"):
        _each([0, 1, 2], task)
    assert done == [2]


def test_a_window_joins_state_stays_bounded_as_windows_fire() -> None:
    # both inputs in step through 200 s of event time: the rows stored stay within a few
    # windows' worth (compaction drops the fired ones), far below the rows that passed
    from gpustream.batch import Batch
    from gpustream.operators.join import JoinSpec, WindowJoinOp

    rng = np.random.default_rng(4)
    p = gs.Pipeline(engine="cpu")
    cols = {"k": pa.array([0]), "v": pa.array([0]), "ts": pa.array([0])}
    a = p.source(gs.from_arrow(cols), event_time="ts", name="a")
    b = p.source(gs.from_arrow(cols), event_time="ts", name="b")
    schema = a.window_join(b, on="k", window=gs.Tumbling(1000)).schema
    spec = JoinSpec(("k",), ("k",), "ts", "ts", (("v", "v_right"), ("ts", "ts_right")), schema,
                    (False,))
    op = WindowJoinOp(spec, 1000, 1000, 0, 0, p.backend)
    stored, pairs, passed = [], 0, 0
    for step in range(200):
        for port in (0, 1):
            ts = step * 1000 + np.sort(rng.integers(0, 1000, 3000))
            batch = Batch.from_arrow(pa.record_batch({"k": rng.integers(0, 500, 3000),
                                                      "v": np.arange(3000), "ts": ts}))
            batch.watermarks = np.full(3000, step * 1000 - 1)
            op.process_port(port, batch)
            passed += 3000
        pairs += sum(x.num_rows for x in op.input_watermark(0, step * 1000 + 999)[0])
        pairs += sum(x.num_rows for x in op.input_watermark(1, step * 1000 + 999)[0])
        stored.append(op.stores[0].n + op.stores[1].n)
    assert pairs > 100_000
    assert max(stored) < 80_000 < passed, max(stored)
    assert op.state_bytes() < 20_000_000
