"""OVER over a changelog: the OVER window of the table a changelog describes, kept
current as a changelog.

An OVER window over an append-only stream emits each row once, when the watermark has
passed it (:mod:`gpustream.operators.over`). Over a changelog (a top-N's ``+I``/``-D``, a
running aggregation's updates: Nexmark q6's "average of each seller's last ten winning
bids") rows come and go, and a row's frame changes when a row before it does. This
operator holds the table the changelog describes (its current rows) and, for every batch,
recomputes the OVER aggregates of the keys the batch touched: the table's rows of those
keys sorted by ``order_by`` (then arrival), each row's frame as the append-only operator
frames it (ROWS ``n`` preceding, RANGE ``t``, or unbounded), then emits the difference
from what it emitted for those keys before: ``-D`` for a row that is no longer in the
result, ``+I`` for a new one. ``gs.materialize`` of its output is, after every batch, the
OVER of the input table so far: it depends on the changes, not on how they are batched,
and needs no event time (Flink refuses an OVER over an updating input).

**Work.** Per batch: the input rows it deletes are matched to held rows (every column
equal, duplicates one for one) and removed, the rows it adds appended with their
aggregates' inputs evaluated once; the touched keys' rows are sorted and framed with the
append-only operator's kernels (:mod:`gpustream.kernels.over`), and old and new result
rows are matched the same way. The cost is linear in the held rows of the touched keys
(plus the sort), on the host on every backend (as the append-only operator).

**State.** The input table's rows and the result rows emitted and not deleted, both as
plain arrays in checkpoints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend, select_backend
from gpustream.batch import Batch
from gpustream.changelog import DELETE, INSERT, OP_COLUMN, op_dictionary, weights
from gpustream.kernels.hashing import hash_rows
from gpustream.kernels.over import frame_bounds
from gpustream.operators.over import OverOp, OverSpec
from gpustream.state.keyed import key_words

__all__ = ["ChangelogOverOp", "match_rows"]


def match_rows(a: Any, b: Any) -> tuple[Any, Any]:
    """Match the rows of ``a`` and ``b`` (``uint64[k, n]`` words, e.g. from
    :func:`~gpustream.state.keyed.key_words`) one for one where equal: which rows of
    each found a partner (of ``x`` equal rows in ``a`` and ``y`` in ``b``, the first
    ``min(x, y)`` of each).

    Examples
    --------
    >>> a = np.array([[1, 2, 2, 3]], dtype=np.uint64)
    >>> b = np.array([[2, 4, 1]], dtype=np.uint64)
    >>> [m.tolist() for m in match_rows(a, b)]
    [[True, True, False, False], [True, False, True]]
    """
    na, nb = a.shape[1], b.shape[1]
    if not na or not nb:
        return np.zeros(na, dtype=np.bool_), np.zeros(nb, dtype=np.bool_)
    words = np.concatenate([a, b], axis=1)
    side = np.concatenate([np.zeros(na, np.int64), np.ones(nb, np.int64)])
    order = np.lexsort([side, *words[::-1]])  # equal rows together, a's first
    w = words[:, order]
    n = na + nb
    start = np.ones(n, dtype=np.bool_)
    if n > 1:
        start[1:] = (w[:, 1:] != w[:, :-1]).any(axis=0)
    group = np.cumsum(start) - 1
    s = side[order]
    ones = np.bincount(group, weights=s).astype(np.int64)
    total = np.bincount(group)
    first = np.flatnonzero(start)
    rank = np.arange(n) - first[group]  # position within its run of equal rows
    in_a = total[group] - ones[group]  # rows of a in the run
    in_b = ones[group]
    hit = np.where(s == 0, rank < in_b, rank - in_a < in_a)
    matched = np.empty(n, dtype=np.bool_)
    matched[order] = hit
    return matched[:na], matched[na:]


class ChangelogOverOp(OverOp):
    """OVER over a changelog (module docstring); host arrays on every backend.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> from gpustream.expr import col
    >>> from gpustream.operators.over import OverAgg
    >>> rows = pa.schema({"k": pa.int64(), "t": pa.int64(), "v": pa.int64(),
    ...                   "op": pa.string()})
    >>> out = pa.schema([rows.field("k"), rows.field("t"), rows.field("v"),
    ...                  pa.field("s", pa.int64()), pa.field("op", pa.string())])
    >>> spec = OverSpec("o", ("k",), "t", None, 1, (OverAgg("s", col("v").sum(), pa.int64()),),
    ...                 rows, out)
    >>> op = ChangelogOverOp(spec, select_backend("cpu"))
    >>> ins = pa.record_batch({"k": [1, 1], "t": [5, 9], "v": [10, 20], "op": ["+I", "+I"]})
    >>> op.process(Batch.from_arrow(ins))[0].to_arrow().to_pydict()
    {'k': [1, 1], 't': [5, 9], 'v': [10, 20], 's': [10, 30], 'op': ['+I', '+I']}
    >>> gone = pa.record_batch({"k": [1], "t": [5], "v": [10], "op": ["-D"]})
    >>> op.process(Batch.from_arrow(gone))[0].to_arrow().to_pydict()
    {'k': [1, 1, 1], 't': [5, 9, 9], 'v': [10, 20, 20], 's': [10, 30, 20], 'op': ['-D', '-D', '+I']}
    """

    def __init__(self, spec: OverSpec, backend: Backend) -> None:
        table = pa.schema([f for f in spec.input_schema if f.name != OP_COLUMN])
        result = pa.schema([f for f in spec.schema if f.name != OP_COLUMN])
        super().__init__(replace(spec, input_schema=table, schema=result, unbounded=False),
                         backend)
        self.out_schema = spec.schema
        self._host = select_backend("cpu")  # the held rows are host arrays
        self.op_dictionary = op_dictionary()
        #: the result rows emitted and not deleted (host)
        self.out: Batch | None = None

    @property
    def state_rows(self) -> int:
        """Rows of the input table held."""
        return int(self.ts.shape[0])

    def _words(self, batch: Batch, names: list[str]) -> Any:
        return key_words(names, batch, np.arange(batch.num_rows), None, np)

    def _key_hashes(self, batch: Batch) -> Any:
        keys = list(self.spec.keys)
        if not keys:
            return np.zeros(batch.num_rows, dtype=np.uint64)
        return hash_rows(self._words(batch, keys), self._host)  # (host rows, any backend)

    def process(self, batch: Batch) -> list[Batch]:
        if batch.num_rows == 0:
            return []
        batch = batch.to_host()
        spec = self.spec
        self.dictionaries.update(batch.dictionaries)
        rows = batch.select(spec.input_schema.names)
        adds = np.asarray(weights(batch, np)) > 0  # +I, +U add; -U, -D take back
        touched = np.unique(self._key_hashes(rows))
        names = spec.input_schema.names
        if (~adds).any() and self.rows is not None:  # deletions: matched rows leave
            held = self.rows.select(names)
            gone, _ = match_rows(self._words(held, names),
                                 self._words(rows.filter(~adds), names))
            if gone.any():
                keep = ~gone
                self.rows = self.rows.filter(keep)
                self.ts, self.arrival = self.ts[keep], self.arrival[keep]
                self.emitted = self.emitted[keep]
        if adds.any():
            new = rows.filter(adds)
            ts = np.asarray(new[spec.event_time]).astype(np.int64, copy=False)
            arrival = np.arange(self.seq, self.seq + new.num_rows, dtype=np.int64)
            self.seq += new.num_rows
            self._append(new, ts, arrival)
        return self._changes(touched)

    def _changes(self, touched: Any) -> list[Batch]:
        """Recompute the touched keys' result rows; emit the difference."""
        spec = self.spec
        new = None
        if self.rows is not None and self.rows.num_rows:
            mine = np.isin(self._key_hashes(self.rows), touched)
            sel = np.flatnonzero(mine)
            if sel.shape[0]:
                kw = self._words(self.rows, list(spec.keys)) if spec.keys else None
                words = [] if kw is None else [kw[c] for c in range(kw.shape[0] - 1, -1, -1)]
                order = np.lexsort([self.arrival[sel], self.ts[sel],
                                    *[w[sel] for w in words]])
                sel = sel[order]
                n = sel.shape[0]
                start = np.ones(n, dtype=np.bool_)
                if kw is not None and n > 1:
                    ks = kw[:, sel]
                    start[1:] = (ks[:, 1:] != ks[:, :-1]).any(axis=0)
                idx = np.arange(n, dtype=np.int64)
                group = np.maximum.accumulate(np.where(start, idx, 0))
                lo, hi = frame_bounds(self.ts[sel], group, spec.range_span, spec.rows)
                every = np.ones(n, dtype=np.bool_)
                parts = self._parts(self.rows, sel, group, lo, hi, every, idx, None)
                new = self._output(self.rows, sel, parts, on_device=False)
        old = None
        if self.out is not None and self.out.num_rows:
            affected = np.isin(self._key_hashes(self.out), touched)
            old = self.out.filter(affected)
            self.out = self.out.filter(~affected)
        names = self.spec.schema.names
        stay_old = stay_new = None
        if old is not None and new is not None:
            stay_old, stay_new = match_rows(self._words(old, names), self._words(new, names))
        out: list[Batch] = []
        parts_out = []
        if old is not None:
            gone = old if stay_old is None else old.filter(~stay_old)
            if gone.num_rows:
                parts_out.append((gone, DELETE))
        if new is not None:
            came = new if stay_new is None else new.filter(~stay_new)
            if came.num_rows:
                parts_out.append((came, INSERT))
            self.out = new if self.out is None else Batch.concat([self.out, new], np)
        for rows, code in parts_out:
            out.append(self._with_op(rows, code))
        if len(out) > 1:
            out = [Batch.concat(out, np)]
        return [b.to_device(self.backend) for b in out]

    def _with_op(self, rows: Batch, code: int) -> Batch:
        columns = dict(rows.columns)
        validity = {c: rows.validity(c) for c in rows.column_names}
        columns[OP_COLUMN] = np.full(rows.num_rows, code, dtype=np.int32)
        validity[OP_COLUMN] = None
        dictionaries = {c: self.dictionaries[c] for c in rows.column_names
                        if c in self.dictionaries}
        dictionaries[OP_COLUMN] = self.op_dictionary
        watermarks = np.full(rows.num_rows, self.forwarded, dtype=np.int64)
        return Batch(columns, self.out_schema, validity, dictionaries, watermarks)

    def on_watermark(self, watermark: int) -> list[Batch]:
        self.forwarded = max(self.forwarded, watermark)
        return []

    def side_outputs(self) -> dict[str, list[Batch]]:
        return {}

    def snapshot(self) -> dict[str, Any]:
        """The input table's rows (as the append-only operator keeps rows) and the result
        rows emitted."""
        state = super().snapshot()
        if self.out is not None:
            for c in self.out.column_names:
                state[f"out.{c}"] = self.out[c]
                ok = self.out.validity(c)
                if ok is not None:
                    state[f"outvalid.{c}"] = ok
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        columns = {k[4:]: np.asarray(v) for k, v in state.items() if k.startswith("out.")}
        self.out = None
        if columns:
            validity = {k[9:]: np.asarray(v, dtype=np.bool_) for k, v in state.items()
                        if k.startswith("outvalid.")}
            self.out = Batch({c: columns[c] for c in self.spec.schema.names},
                             self.spec.schema, validity)
