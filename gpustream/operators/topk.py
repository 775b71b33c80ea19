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

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.operators.base import Operator
from gpustream.state.table import array_bytes

__all__ = ["TopKOp", "TopKSpec"]

I64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class TopKSpec:
    """A top-N step: ``n`` rows per window (and per ``per`` columns) by column ``by``."""

    n: int
    by: str
    descending: bool
    per: tuple[str, ...]
    schema: pa.Schema  #: the output schema: the input's columns, then ``rank``


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
        value = rows[spec.by]
        ok = rows.validity(spec.by)
        m = rows.num_rows
        # sort keys, least significant first: arrival (ties), the value (nulls after
        # every value), then the groups (``per``, window start, window end)
        if spec.descending:  # order-reversing without overflow: ~x for integers and bools
            value = -value if value.dtype.kind == "f" else ~value
        keys = [value]
        if ok is not None:
            keys.append(~ok)
        groups = [rows["window_end"], rows["window_start"]]
        for name in spec.per:
            col = rows[name]
            valid = rows.validity(name)
            groups.append(col if valid is None else xp.where(valid, col, 0))
            if valid is not None:
                groups.append(~valid)
        order = xp.arange(m, dtype=np.int64)  # stable sorts, one key at a time
        for key in keys + groups[::-1]:
            order = order[xp.argsort(key[order], kind="stable")]
        sorted_groups = [g[order] for g in groups]
        first = xp.ones(m, dtype=bool)
        if m:
            change = xp.zeros(m - 1, dtype=bool)
            for g in sorted_groups:
                change |= g[1:] != g[:-1]
            first[1:] = change
        group = xp.cumsum(first) - 1  # each sorted row's group
        rank = xp.arange(m) - xp.flatnonzero(first)[group] + 1
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
