"""Top-N per window: the ``n`` rows with the largest (or smallest) value of a column in
each window of a window's output, optionally per group of other columns.

Flink writes this ``ROW_NUMBER() OVER (PARTITION BY window_start, window_end ... ORDER BY
x DESC) <= n`` over a window's result (Nexmark q5, q19). The input is a window's rows: all
rows of one window have the event time ``window_end - 1`` and reach this step before the
watermark passes ``window_end`` (DESIGN.md section 11). So rows wait per window until the
watermark passes its end, then each window's groups are ranked in one vectorized pass
(a sort by window, group, value), and the first ``n`` of each come out with their
``rank`` (1, 2, ...: a row number, so ties share no rank). Ties in the value are ranked
in the order the window emitted the rows (by its keys), and nulls rank after every value.
Results do not depend on batching. Memory holds the rows of the windows not yet ranked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.ingest.dictionary import StringDictionary
from gpustream.operators.base import Operator
from gpustream.state.table import array_bytes

__all__ = ["TopKOp", "TopKSpec", "TopNChangelogOp", "group_ranks"]

I64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class TopKSpec:
    """A top-N step: ``n`` rows per window (and per ``per`` columns) by column ``by``."""

    n: int
    by: str
    descending: bool
    per: tuple[str, ...]
    schema: pa.Schema  #: the output schema: the input's columns, then ``rank``
    #: ties in ``by`` keep the later row (default: the earlier)
    keep_last: bool = False
    #: further sort columns for rows of equal ``by``: ``(column, descending)``
    then: tuple[tuple[str, bool], ...] = ()


def _sort_keys(rows: Batch, by: str, descending: bool, xp: Any) -> list[Any]:
    """Sort keys of one column, least significant first: its values (largest first if
    ``descending``), then nulls after every value."""
    value = rows[by]
    ok = rows.validity(by)
    if ok is not None:  # (what a null slot holds must not order the nulls)
        value = xp.where(ok, value, xp.zeros((), dtype=value.dtype))
    if descending:  # order-reversing without overflow: ~x for integers and bools
        value = -value if value.dtype.kind == "f" else ~value
    return [value] if ok is None else [value, ~ok]


def group_ranks(rows: Batch, by: str, descending: bool, groups: list[Any],
                per: tuple[str, ...], xp: Any, last: bool = False,
                then: tuple[tuple[str, bool], ...] = ()) -> tuple[Any, Any]:
    """``(order, rank)``: the rows sorted by their group (the arrays ``groups``, then the
    ``per`` columns), then by ``by`` (largest first if ``descending``; nulls after every
    value), then by the ``then`` columns (each ``(column, descending)``), ties in row
    order (``last``: the later row first); and each sorted row's rank in its group
    (1, 2, ...).

    Examples
    --------
    >>> b = Batch.from_arrow(pa.record_batch({"g": [1, 2, 1, 1], "v": [5, 9, 7, 5]}))
    >>> order, rank = group_ranks(b, "v", True, [], ("g",), np)
    >>> order.tolist(), rank.tolist()
    ([2, 0, 3, 1], [1, 2, 3, 1])
    >>> b = Batch.from_arrow(pa.record_batch({"v": [5, 5, 7], "t": [9, 2, 4]}))
    >>> group_ranks(b, "v", True, [], (), np, then=(("t", False),))[0].tolist()
    [2, 1, 0]
    """
    m = rows.num_rows
    # sort keys, least significant first: position (ties), the ``then`` columns (the
    # last first), the value (nulls after every value), then the groups
    keys = [k for name, desc in then[::-1] for k in _sort_keys(rows, name, desc, xp)]
    keys += _sort_keys(rows, by, descending, xp)
    groups = list(groups)
    for name in per:
        col = rows[name]
        valid = rows.validity(name)
        groups.append(col if valid is None else xp.where(valid, col, 0))
        if valid is not None:
            groups.append(~valid)
    order = xp.arange(m, dtype=np.int64)  # stable sorts, one key at a time
    if last:
        order = order[::-1].copy()
    for key in keys + groups[::-1]:
        order = order[xp.argsort(key[order], kind="stable")]
    first = xp.ones(m, dtype=bool)
    if m and groups:
        change = xp.zeros(m - 1, dtype=bool)
        for g in groups:
            sg = g[order]
            change |= sg[1:] != sg[:-1]
        first[1:] = change
    elif m:
        first[1:] = False
    group = xp.cumsum(first) - 1  # each sorted row's group
    rank = xp.arange(m) - xp.flatnonzero(first)[group] + 1
    return order, rank


class TopKOp(Operator):
    """The ``n`` best rows of each window of a window's output (see the module docstring).

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(),
    ...                     "window_end": pa.int64(), "n": pa.int64(), "rank": pa.int32()})
    >>> op = TopKOp(TopKSpec(1, "n", True, (), schema), select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 2, 3], "window_start": [0, 0, 10],
    ...                                       "window_end": [10, 10, 20], "n": [4, 7, 2]}))
    >>> b.watermarks = np.full(3, I64_MIN)
    >>> op.process(b)
    []
    >>> op.on_watermark(10)[0].to_arrow().to_pydict()
    {'k': [2], 'window_start': [0], 'window_end': [10], 'n': [7], 'rank': [1]}
    """

    def __init__(self, spec: TopKSpec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self.held: list[Batch] = []  #: rows of windows not ranked yet
        self.dictionaries: dict[str, Any] = {}
        #: the last watermark passed on: the per-row watermark of the rows emitted
        self.forwarded = I64_MIN
        self._input = pa.schema([f for f in spec.schema if f.name != "rank"])

    def restore_dictionaries(self, dictionaries: Mapping[str, StringDictionary]) -> None:
        """The input's dictionaries after a restore: they decode the held rows."""
        self.dictionaries.update(dictionaries)

    def process(self, batch: Batch) -> list[Batch]:
        if batch.num_rows:
            self.dictionaries.update(batch.dictionaries)
            self.held.append(batch)
        return []

    def on_watermark(self, watermark: int) -> list[Batch]:
        out = self._rank(watermark)
        self.forwarded = max(self.forwarded, watermark)
        return out

    def _rank(self, watermark: int) -> list[Batch]:
        if not self.held:
            return []
        xp = self.xp
        rows = Batch.concat(self.held, xp)
        due = rows["window_end"] <= watermark
        if not bool(due.any()):
            return []
        self.held = [] if bool(due.all()) else [rows.filter(~due)]
        rows = rows.filter(due)
        spec = self.spec
        order, rank = group_ranks(rows, spec.by, spec.descending,
                                  [rows["window_end"], rows["window_start"]], spec.per, xp,
                                  spec.keep_last, spec.then)
        keep = rank <= spec.n
        picked = order[keep]
        columns = {name: rows[name][picked] for name in self._input.names}
        validity: dict[str, Any] = {}
        for name in self._input.names:
            valid = rows.validity(name)
            validity[name] = None if valid is None else valid[picked]
        columns["rank"] = rank[keep].astype(physical_dtype(pa.int32()))
        validity["rank"] = None
        watermarks = xp.full(int(picked.shape[0]), self.forwarded, dtype=np.int64)
        used = {k: v for k, v in self.dictionaries.items() if k in columns}
        return [Batch(columns, spec.schema, validity, used, watermarks)]

    def state_bytes(self) -> int:
        return sum(array_bytes(*b.columns.values()) for b in self.held)

    def snapshot(self) -> dict[str, Any]:
        """The rows waiting for their window's ranking, and the watermark passed on."""
        state: dict[str, Any] = {"forwarded": np.array([self.forwarded], dtype=np.int64)}
        if self.held:
            rows = Batch.concat(self.held, self.xp)
            for name in self._input.names:
                state[f"col.{name}"] = self.backend.to_host(rows[name])
                valid = rows.validity(name)
                state[f"valid.{name}"] = (np.ones(rows.num_rows, dtype=bool) if valid is None
                                          else self.backend.to_host(valid))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.forwarded = int(state["forwarded"][0])
        self.held = []
        if f"col.{self._input.names[0]}" in state:
            to_device = self.backend.to_device
            columns = {n: to_device(state[f"col.{n}"]) for n in self._input.names}
            validity = {n: to_device(state[f"valid.{n}"]) for n in self._input.names}
            self.held = [Batch(columns, self._input, validity, {})]


class TopNChangelogOp(Operator):
    """The ``n`` best rows per ``per`` group over a whole stream, as a changelog (SQL's
    ``ROW_NUMBER() OVER (PARTITION BY per ORDER BY by DESC) <= n`` without a window;
    Nexmark q18, q19): a row entering its group's top ``n`` is emitted ``+I``, a row
    pushed out ``-D`` (:mod:`gpustream.changelog`; rows carry no rank: a rank would change
    for every row below a newcomer). Each batch is ranked together with the rows held:
    ties keep the earlier row, nulls rank after every value. Rows entering and leaving
    within one batch emit nothing; the rows held (``materialize`` of the changelog) do not
    depend on batching. Memory holds at most ``n`` rows per group.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> schema = pa.schema({"g": pa.int64(), "v": pa.int64(), "op": pa.string()})
    >>> op = TopNChangelogOp(TopKSpec(1, "v", True, ("g",), schema), select_backend("cpu"))
    >>> op.process(Batch.from_arrow(pa.record_batch({"g": [1, 1], "v": [3, 2]})))[0] \\
    ...     .to_arrow().to_pydict()
    {'g': [1], 'v': [3], 'op': ['+I']}
    >>> op.process(Batch.from_arrow(pa.record_batch({"g": [1], "v": [8]})))[0] \\
    ...     .to_arrow().to_pydict()
    {'g': [1, 1], 'v': [3, 8], 'op': ['-D', '+I']}
    """

    def __init__(self, spec: TopKSpec, backend: Backend) -> None:
        from gpustream.changelog import op_dictionary

        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self._input = pa.schema([f for f in spec.schema if f.name != "op"])
        self.held: Batch | None = None  #: each group's best rows so far
        self.dictionaries: dict[str, Any] = {}
        self.op_dictionary = op_dictionary()
        self.forwarded = I64_MIN  #: the last watermark passed on: the rows' watermark

    def restore_dictionaries(self, dictionaries: Mapping[str, StringDictionary]) -> None:
        """The input's dictionaries after a restore: they decode the held rows."""
        self.dictionaries.update(dictionaries)

    @property
    def state_rows(self) -> int:
        return 0 if self.held is None else self.held.num_rows

    def state_bytes(self) -> int:
        return 0 if self.held is None else array_bytes(*self.held.columns.values())

    def process(self, batch: Batch) -> list[Batch]:
        from gpustream.changelog import DELETE, INSERT

        if not batch.num_rows:
            return []
        xp = self.xp
        spec = self.spec
        self.dictionaries.update(batch.dictionaries)
        new = batch.select(self._input.names)
        new.watermarks = None
        held = 0 if self.held is None else self.held.num_rows
        rows = new if self.held is None else Batch.concat([self.held, new], xp)
        order, rank = group_ranks(rows, spec.by, spec.descending, [], spec.per, xp,
                                  spec.keep_last, spec.then)
        kept = xp.zeros(rows.num_rows, dtype=bool)
        kept[order[rank <= spec.n]] = True
        gone = xp.nonzero(~kept[order] & (order < held))[0]  # held rows pushed out
        came = xp.nonzero(kept[order] & (order >= held))[0]  # new rows that entered
        self.held = rows.filter(kept)
        picked = xp.concatenate([order[gone], order[came]])
        if not picked.shape[0]:
            return []
        columns = {n: rows[n][picked] for n in self._input.names}
        validity: dict[str, Any] = {}
        for n in self._input.names:
            valid = rows.validity(n)
            validity[n] = None if valid is None else valid[picked]
        columns["op"] = xp.concatenate([xp.full(int(gone.shape[0]), DELETE, dtype=np.int32),
                                        xp.full(int(came.shape[0]), INSERT, dtype=np.int32)])
        validity["op"] = None
        used: dict[str, Any] = {k: v for k, v in self.dictionaries.items() if k in columns}
        used["op"] = self.op_dictionary
        watermarks = xp.full(int(picked.shape[0]), self.forwarded, dtype=np.int64)
        return [Batch(columns, spec.schema, validity, used, watermarks)]

    def on_watermark(self, watermark: int) -> list[Batch]:
        self.forwarded = max(self.forwarded, watermark)
        return []

    def snapshot(self) -> dict[str, Any]:
        """The rows held, and the watermark passed on."""
        state: dict[str, Any] = {"forwarded": np.array([self.forwarded], dtype=np.int64)}
        if self.held is not None:
            for name in self._input.names:
                state[f"col.{name}"] = self.backend.to_host(self.held[name])
                valid = self.held.validity(name)
                state[f"valid.{name}"] = (np.ones(self.held.num_rows, dtype=bool)
                                          if valid is None else self.backend.to_host(valid))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.forwarded = int(state["forwarded"][0])
        self.held = None
        if f"col.{self._input.names[0]}" in state:
            to_device = self.backend.to_device
            columns = {n: to_device(state[f"col.{n}"]) for n in self._input.names}
            validity = {n: to_device(state[f"valid.{n}"]) for n in self._input.names}
            self.held = Batch(columns, self._input, validity, {})
