"""A plain reference for keyed event-time windows, written from DESIGN.md section 3.

It walks the events in arrival order with Python integers and computes each window's
aggregates with pandas over the rows that count, independently of gpustream's kernels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tests.reference import to_pandas

AGG_KINDS = ("count", "count_valid", "sum", "min", "max", "mean", "var", "std", "first", "last",
             "count_distinct", "approx_count_distinct")


def _windows(ts: int, size: int, slide: int, offset: int) -> list[int]:
    last = ts - ((ts - offset) % slide)
    return [last - j * slide for j in range(size // slide)]


def _aggregate(rows: pd.DataFrame, kind: str, column: str | None, ts_col: str) -> Any:
    if kind == "count":
        return len(rows)
    assert column is not None
    s = rows[column]
    nn = s.dropna()
    if kind == "count_valid":
        return len(nn)
    if kind in ("count_distinct", "approx_count_distinct"):
        return nn.nunique()
    if kind in ("first", "last"):
        ok = rows[s.notna()]
        if ok.empty:
            return None
        # arrival order is the row order; sort by event time, stable
        ordered = ok.sort_values(ts_col, kind="stable")
        return ordered[column].iloc[0 if kind == "first" else -1]
    if nn.empty:
        return None
    if kind == "sum":
        return nn.sum()
    if kind == "min":
        return nn.min()
    if kind == "max":
        return nn.max()
    if kind == "mean":
        return float(nn.astype(float).mean())
    if len(nn) < 2:
        return None
    var = float(np.var(nn.astype(float).to_numpy(), ddof=1))
    return var if kind == "var" else math.sqrt(var)


def _arrivals(df: pd.DataFrame, keys: Sequence[str], ts_col: str, delay: int,
              late_rows: list[int]) -> Iterator[tuple[int, int, int | None, tuple]]:
    """(row, event time in ms, watermark as of the row or None, key) in arrival order.

    Rows without an event time go to ``late_rows`` and are not yielded.
    """
    running: int | None = None
    for i in range(len(df)):
        t = df[ts_col].iloc[i]
        wm = None if running is None else running - delay
        if pd.isna(t):
            late_rows.append(i)
            continue
        t = int(t.value // 10**6) if isinstance(t, pd.Timestamp) else int(t)
        key = tuple(None if pd.isna(df[k].iloc[i]) else df[k].iloc[i] for k in keys)
        yield i, t, wm, key
        running = t if running is None else max(running, t)


def reference_windows(
    table: pa.Table, keys: Sequence[str], ts_col: str, size: int, slide: int, offset: int,
    delay: int, lateness: int, aggs: dict[str, tuple[str, str | None]],
) -> tuple[pd.DataFrame, list[int]]:
    """(output rows sorted by window_end, window_start, keys, revision; late row numbers)."""
    df = to_pandas(table).reset_index(drop=True)
    on_time: dict[tuple, list[int]] = defaultdict(list)
    late_allowed: list[tuple[tuple, int]] = []  # in arrival order
    late_rows: list[int] = []
    for i, t, wm, key in _arrivals(df, keys, ts_col, delay, late_rows):
        updated = False
        for start in _windows(t, size, slide, offset):
            end = start + size
            window = (*key, start)
            if wm is None or end > wm:
                on_time[window].append(i)
                updated = True
            elif end + lateness > wm:
                late_allowed.append((window, i))
                updated = True
        if not updated:
            late_rows.append(i)
    out = []
    fired: dict[tuple, list[int]] = {}
    for w, rows in on_time.items():
        fired[w] = list(rows)
        out.append((w, 0, rows))
    revisions: dict[tuple, int] = {w: 1 for w in on_time}
    for w, i in late_allowed:
        rows = fired.setdefault(w, [])
        rows.append(i)
        rev = revisions.get(w, 0)
        revisions[w] = rev + 1
        out.append((w, rev, list(rows)))
    firings = [(w[:-1], w[-1], w[-1] + size, rows, rev) for w, rev, rows in out]
    return _output(df, keys, ts_col, aggs, lateness, firings), late_rows


def _output(df: pd.DataFrame, keys: Sequence[str], ts_col: str,
            aggs: dict[str, tuple[str, str | None]], lateness: int,
            firings: list[tuple[tuple, int, int, list[int], int]]) -> pd.DataFrame:
    """Output rows, one per firing (key, start, end, rows, revision), in canonical order."""
    records = []
    for key, start, end, rows, rev in firings:
        rec: dict[str, Any] = {k: key[j] for j, k in enumerate(keys)}
        rec["window_start"], rec["window_end"] = start, end
        sub = df.iloc[rows]
        for name, (kind, column) in aggs.items():
            rec[name] = _aggregate(sub, kind, column, ts_col)
        if lateness:
            rec["revision"] = rev
        records.append(rec)
    cols = [*keys, "window_start", "window_end", *aggs, *(["revision"] if lateness else [])]
    return sort_output(pd.DataFrame.from_records(records, columns=cols), keys)


def sort_output(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows in a canonical order: window_end, window_start, keys (nulls last), revision."""
    by = ["window_end", "window_start", *keys] + (["revision"] if "revision" in df else [])
    return df.sort_values(by, kind="stable", na_position="last").reset_index(drop=True)


def assert_windows_equal(got: pd.DataFrame, want: pd.DataFrame, approx: Sequence[str] = (),
                         hll: Sequence[str] = ()) -> None:
    """Same rows; floats to 1e-9 relative, ``approx`` columns to 1e-6, HLL within 5 %."""
    assert list(got.columns) == list(want.columns), (list(got.columns), list(want.columns))
    assert len(got) == len(want), (len(got), len(want))
    for c in got.columns:
        g = got[c].astype(object).where(got[c].notna(), None).tolist()
        w = want[c].astype(object).where(want[c].notna(), None).tolist()
        assert [x is None for x in g] == [x is None for x in w], c
        pairs = [(x, y) for x, y in zip(g, w, strict=True) if x is not None]
        if c in hll:
            for x, y in pairs:
                assert abs(x - y) <= max(2, 0.05 * y), (c, x, y)
        elif pairs and isinstance(pairs[0][0], (float, np.floating)):
            tol = 1e-6 if c in approx else 1e-9
            a = np.array([p[0] for p in pairs], dtype=float)
            b = np.array([p[1] for p in pairs], dtype=float)
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=c)
        else:
            assert [x for x, _ in pairs] == [y for _, y in pairs], c


def reference_sessions(
    table: pa.Table, keys: Sequence[str], ts_col: str, gap: int, delay: int,
    aggs: dict[str, tuple[str, str | None]], lateness: int = 0,
) -> tuple[pd.DataFrame, list[int]]:
    """Session windows per DESIGN.md with Flink's merge-first lateness.

    Per event in arrival order, for its key: sessions whose end <= its watermark and that
    hold events not yet emitted fire (revision = firings so far); sessions whose end +
    lateness <= watermark are gone. The event's window [t, t + gap) merges with every
    held session it overlaps (revision: the largest of theirs); with none, it opens a
    session unless t + gap + lateness <= watermark (late). A session that ends at or
    before the watermark after this fires again at once; otherwise it waits for its end.

    With lateness, so that sessions never overlap: an event before the end of a gone
    session of its key is late, and so is one older than the ``floor`` of the sessions it
    would join (watermark - gap - lateness when the session opened; merged: the least).
    """
    df = to_pandas(table).reset_index(drop=True)
    held: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    fired: list[tuple[tuple, int, int, list[int], int]] = []
    late_rows: list[int] = []

    def fire(key: tuple, s: dict[str, Any]) -> None:
        fired.append((key, s["start"], s["end"], sorted(s["rows"]), s["rev"]))
        s["rev"] += 1
        s["dirty"] = False

    gone_end: dict[tuple, float] = defaultdict(lambda: -math.inf)
    for i, t, wm, key in _arrivals(df, keys, ts_col, delay, late_rows):
        sessions = held[key]
        if wm is not None:
            for s in sessions:
                if s["dirty"] and s["end"] <= wm:
                    fire(key, s)
            for s in sessions:
                if s["end"] + lateness <= wm:
                    gone_end[key] = max(gone_end[key], s["end"])
            sessions[:] = [s for s in sessions if s["end"] + lateness > wm]
        hit = [s for s in sessions if s["start"] < t + gap and t < s["end"]]
        too_late = not hit and wm is not None and t + gap + lateness <= wm
        if lateness and (t < gone_end[key] or (hit and t < min(s["floor"] for s in hit))):
            too_late = True  # it would overlap a gone session, or lies before the floor
        if too_late:
            late_rows.append(i)
        else:
            merged = {"start": min([t] + [s["start"] for s in hit]),
                      "end": max([t + gap] + [s["end"] for s in hit]),
                      "rows": [i] + [r for s in hit for r in s["rows"]],
                      "rev": max([0] + [s["rev"] for s in hit]), "dirty": True,
                      "floor": (min(s["floor"] for s in hit) if hit else
                                -math.inf if wm is None else wm - gap - lateness)}
            for s in hit:
                sessions.remove(s)
            sessions.append(merged)
            if wm is not None and merged["end"] <= wm:
                fire(key, merged)
    for key, sessions in held.items():
        for s in sessions:
            if s["dirty"]:
                fire(key, s)
    return _output(df, keys, ts_col, aggs, lateness, fired), late_rows
