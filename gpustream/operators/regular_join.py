"""Regular (unwindowed) joins of two streams: ``Stream.join`` (DESIGN.md sections 3, 11).

Every pair of rows with equal keys joins, whatever their event times, as SQL's join of
two tables that grow. The output has the left input's columns, then the right's (as
:func:`gpustream.plan.join_columns` names them), then ``op`` (:mod:`gpustream.changelog`):

- ``how="inner"``: append-only, without the ``op`` column (every row an insert).
- ``how="left" | "right" | "full"``: Flink's changelog. A row of an outer side that has
  no partner yet is emitted at once as ``+I`` with nulls for the other side's columns;
  when its first partner arrives, ``-D`` of that padded row, then ``+I`` of the pair. A
  row matched in the batch it arrives in never emits its padded row. For right-only rows
  of a right or full join, a left key column that the right key of the same name was
  folded into holds the right row's key (as pandas' ``merge`` and SQL's ``USING`` do).
  :func:`gpustream.changelog.materialize` (a multiset) gives the join of all rows, and
  every ``-D`` removes a row emitted before.
- Null keys match nothing (SQL); rows of an outer side with a null key are emitted
  padded and never stored.

**Retention** (``R``, event-time units; None: keep every row forever, and state grows with
the input). ``w(x)`` is the watermark of row ``x``'s own stream as of its arrival (the
per-row watermark; never below the join's watermark passed on before it):

- a row with ``x.ts + R <= w(x)`` is late: it goes to the join's ``late`` (left) or
  ``late_right`` side output unchanged, is counted, and joins nothing;
- a row is dropped from state once the join's watermark (the smaller of its inputs')
  reaches ``x.ts + R``; an outer row dropped unmatched keeps its padded row (no ``-D``);
- two on-time rows ``l``, ``r`` with equal keys join exactly when
  ``max(w(l), w(r)) < min(l.ts, r.ts) + R``: each arrived before the other expired by
  its own stream's watermark. The rule reads only per-row quantities, so the result
  does not depend on batching or on how the inputs interleave (with idle inputs, as
  ``Watermark.with_idleness`` lets them be, the join's watermark can pass an input's and
  the rule then uses the join's). It is not "pairs within ``R`` of each other": with
  in-order inputs and watermark delay ``d`` a pair with ``|l.ts - r.ts| <= R - d`` (and
  both rows on time) always joins, a pair further apart may not.

Both backends run one algorithm over the ``xp`` array namespace: each input's rows are
held (the columns the output needs, key words, 64-bit key hashes, times, per-row
watermarks, a matched flag) in runs sorted by key hash, each run at most half the size
of the one before (a new batch's run merges with the last ones until that holds, so a
row is merged O(log n) times). A batch probes each run of the other input by binary
search of its hashes (:meth:`gpustream.operators.join._JoinBase._pairs` on presorted
rows, pairs expanded by :func:`gpustream.kernels.join.expand_pairs` and its CPU twin)
and keeps the candidates whose key words are equal and that the rule allows. No per-row
Python; nothing held is sorted again for a probe. Retention drops rows by filtering the
runs (which keeps them sorted).

Checkpoints hold each input's rows with their per-row watermarks and matched flags, the
join's key dictionary and the inputs' watermarks (:meth:`RegularJoinOp.snapshot`), and
restore on any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.changelog import DELETE, INSERT, op_dictionary
from gpustream.ingest.dictionary import StringDictionary
from gpustream.kernels.hashing import hash_rows
from gpustream.operators.join import _SIDES, JoinSpec, _JoinBase, _Rows
from gpustream.state.table import array_bytes

__all__ = ["RegularJoinOp"]

#: the join's ``how`` -> whether each input (left, right) is kept without a partner
OUTER = {"inner": (False, False), "left": (True, False), "right": (False, True),
         "full": (True, True)}


class RegularJoinOp(_JoinBase):
    """Every pair of rows with equal keys, emitted when its second row arrives; outer
    joins as a changelog (module docstring).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.backend import select_backend
    >>> from gpustream.changelog import op_field
    >>> schema = pa.schema([("k", pa.int64()), ("ts", pa.int64()), ("ts_right", pa.int64()),
    ...                     op_field()])
    >>> spec = JoinSpec(("k",), ("k",), "ts", "ts", (("ts", "ts_right"),), schema, (False,))
    >>> op = RegularJoinOp(spec, "left", None, select_backend("cpu"))
    >>> a = op.process_port(0, Batch.from_arrow(pa.record_batch({"k": [1], "ts": [5]})))
    >>> b = op.process_port(1, Batch.from_arrow(pa.record_batch({"k": [1], "ts": [9]})))
    >>> [r for x in a + b for r in x.to_arrow().to_pylist()]
    [{'k': 1, 'ts': 5, 'ts_right': None, 'op': '+I'}, {'k': 1, 'ts': 5, 'ts_right': None, 'op': '-D'}, {'k': 1, 'ts': 5, 'ts_right': 9, 'op': '+I'}]
    """

    added_columns = 1  # op (an inner join: 0)

    def __init__(self, spec: JoinSpec, how: str, retention: int | None,
                 backend: Backend) -> None:
        if how not in OUTER:
            raise ValueError(f"join: how={how!r} is not one of {', '.join(OUTER)}")
        super().__init__(spec, backend)
        self.how, self.outer, self.retention = how, OUTER[how], retention
        #: an inner join is append-only: no op column
        self.added_columns = 0 if how == "inner" else 1
        self.op_dict = op_dictionary()
        if how != "inner":
            self.out_dicts["op"] = self.op_dict
        self._late: dict[str, list[Batch]] = {}
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        #: each input's held rows: runs in hash order, each at most half the one before
        self.runs: list[list[_Run]] = [[], []]
        #: restored rows (batch, key words, times) until their watermarks and flags load
        self._restored: list[tuple[Batch, Any, Any] | None] = [None, None]

    # -- input ------------------------------------------------------------------------------
    def _on_time(self, batch: Batch, ts: Any) -> Any:
        return self.xp.ones(batch.num_rows, dtype=bool)  # (late rows left before)

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        self.seen(port)
        xp = self.xp
        n = batch.num_rows
        if n == 0:
            return []
        spec = self.spec
        names = spec.left_on if port == 0 else spec.right_on
        ts = self.times(port, batch)
        wm = xp.full(n, self.current, dtype=np.int64) if batch.watermarks is None \
            else xp.maximum(batch.watermarks, self.current)
        keep = xp.ones(n, dtype=bool)
        if self.retention is not None:
            late = ts + self.retention <= wm
            n_late = int(late.sum())
            if n_late:
                self.late_events += n_late
                self._late.setdefault(_LATE[port], []).append(batch.filter(late))
                keep = ~late
        full = keep
        ts_name = spec.left_ts if port == 0 else spec.right_ts
        for name in (*names, *([ts_name] if ts_name else [])):
            v = batch.validity(name)
            if v is not None:
                full = full & v
        out: list[Batch] = []
        padded_nulls = None
        if self.outer[port] and not bool(full.all()):
            no_key = keep & ~full  # (kept with nulls, never stored: it can match nothing)
            if bool(no_key.any()):
                nulls = batch.filter(no_key)
                self._note_dictionaries(port, nulls)
                padded_nulls = self._padded(port, nulls, None, None, INSERT)
        if not bool(full.all()):
            batch, wm = batch.filter(full), wm[full]
        rows = self._rows(port, batch) if batch.num_rows else None
        if rows is not None:
            out += self._join(port, rows, wm)
        if padded_nulls is not None:
            out.append(padded_nulls)
        return out

    def _note_dictionaries(self, port: int, batch: Batch) -> None:
        for name, d in batch.dictionaries.items():
            o = name if port == 0 else dict(self.spec.right_cols).get(name)
            if o is not None:
                self.out_dicts[o] = d

    def _join(self, port: int, rows: _Rows, wm: Any) -> list[Batch]:
        """Pair ``rows`` (on time, full keys) with the other input's held rows; emit the
        retractions, the pairs and the new padded rows; hold ``rows``."""
        xp = self.xp
        if rows.hashes is None:
            rows = _Rows(rows.batch, rows.keys, hash_rows(rows.keys, self.backend), rows.ts)
        other_side = 1 - port
        retract: list[Batch] = []
        pairs: list[Batch] = []
        hit = xp.zeros(rows.ts.shape[0], dtype=bool)
        r = self.retention
        for run in self.runs[other_side]:
            def fits(p: Any, b: Any, run: _Run = run) -> Any:
                if r is None:
                    return xp.ones(p.shape[0], dtype=bool)
                return xp.maximum(wm[p], run.wm[b]) < xp.minimum(rows.ts[p], run.rows.ts[b]) + r
            found = [(p, b) for p, b in self._pairs(rows, run.rows, fits, presorted=True)
                     if p.shape[0]]
            if not found:
                continue
            held = run.rows
            if self.outer[other_side]:  # first partners: retract the padded rows
                now = run.matched.copy()
                for _, b in found:
                    now[b] = True
                first = xp.flatnonzero(now & ~run.matched)
                if first.shape[0]:
                    retract.append(self._padded(other_side, held.batch, first, held.keys,
                                                DELETE))
                run.matched = now
            for p, b in found:
                hit[p] = True
                codes = ({} if self.how == "inner" else
                         {"op": xp.full(p.shape[0], INSERT, dtype=np.int32)})
                if port == 0:
                    pairs.append(self._emit(rows.batch, p, held.batch, b, codes))
                else:
                    pairs.append(self._emit(held.batch, b, rows.batch, p, codes))
        out = retract + pairs
        if self.outer[port]:
            alone = xp.flatnonzero(~hit)
            if alone.shape[0]:
                out.append(self._padded(port, rows.batch, alone, rows.keys, INSERT))
        kept = rows.batch.select([f.name for f, _ in self._kept(port)])
        kept.watermarks = None
        self._hold(port, _Rows(kept, rows.keys, rows.hashes, rows.ts), wm, hit)
        return out

    def _hold(self, port: int, rows: _Rows, wm: Any, matched: Any) -> None:
        """Add rows to input ``port``'s held runs, in hash order; merge the last runs
        while one is not at least twice the next (so a row is merged O(log n) times and
        a probe searches O(log n) runs)."""
        xp = self.xp
        runs = self.runs[port]
        runs.append(_sorted_run(rows, wm, matched, xp))
        while len(runs) > 1 and runs[-2].size <= 2 * runs[-1].size:
            b, a = runs.pop(), runs.pop()
            runs.append(_sorted_run(*_concat_runs([a, b], xp), xp))

    def _padded(self, port: int, batch: Batch, rows: Any, keys: Any, op: int) -> Batch:
        """Rows ``rows`` of input ``port`` (all of ``batch`` where None) with nulls for
        the other input's columns; a right row's key words (``keys``, None: from the
        batch's own key columns) fill the left key columns its keys were folded into."""
        xp = self.xp
        spec = self.spec
        schema = spec.schema
        n = batch.num_rows if rows is None else int(rows.shape[0])

        def pick(a: Any) -> Any:
            return a if rows is None else a[rows]

        n_left = len(schema) - len(spec.right_cols) - self.added_columns
        right_of = {o: r for r, o in spec.right_cols}
        folded = {a: c for c, (a, b) in enumerate(zip(spec.left_on, spec.right_on,
                                                      strict=True)) if a == b}
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        dicts: dict[str, StringDictionary] = {"op": self.op_dict}
        for i, f in enumerate(schema):
            name = f.name
            if name == "op":
                columns[name] = xp.full(n, op, dtype=np.int32)
                continue
            src = name if port == 0 and i < n_left else \
                right_of.get(name) if port == 1 and i >= n_left else None
            if src is None and port == 1 and name in folded:
                c = folded[name]
                src_name = spec.right_on[c]
                if keys is None:  # the batch's own key column (and its strings)
                    columns[name] = pick(batch[src_name])
                    v = batch.validity(src_name)
                    validity[name] = None if v is None else pick(v)
                    if src_name in batch.dictionaries:
                        dicts[name] = batch.dictionaries[src_name]
                    continue
                words = pick(keys[c]).view(np.int64)
                if spec.string_keys[c]:  # codes of the join's own key dictionary
                    columns[name] = words.astype(np.int32)
                    dicts[name] = self.dicts[c]
                else:
                    columns[name] = words.astype(physical_dtype(f.type, column=name))
                continue
            if src is None:
                columns[name] = xp.zeros(n, dtype=physical_dtype(f.type, column=name))
                validity[name] = xp.zeros(n, dtype=bool)
                if name in self.out_dicts:
                    dicts[name] = self.out_dicts[name]
                elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                    dicts[name] = StringDictionary()  # (all null: no strings to decode)
                continue
            columns[name] = pick(batch[src])
            v = batch.validity(src)
            validity[name] = None if v is None else pick(v)
            if name in self.out_dicts:
                dicts[name] = self.out_dicts[name]
        return Batch(columns, schema, validity, dicts, xp.full(n, self.passed, dtype=np.int64))

    def side_outputs(self) -> dict[str, list[Batch]]:
        """Late rows of each input (``late``: left, ``late_right``: right) since the last
        call, unchanged."""
        out, self._late = self._late, {}
        return out

    # -- watermarks -------------------------------------------------------------------------
    def on_watermark(self, watermark: int) -> list[Batch]:
        self.passed = watermark
        if self.retention is None:
            return []
        for side in (0, 1):  # (filtering keeps a run in hash order)
            kept = []
            for run in self.runs[side]:
                keep = run.rows.ts + self.retention > watermark
                if bool(keep.all()):
                    kept.append(run)
                elif bool(keep.any()):
                    rows = run.rows
                    kept.append(_Run(_Rows(rows.batch.filter(keep), rows.keys[:, keep],
                                           rows.hashes[keep], rows.ts[keep]),
                                     run.wm[keep], run.matched[keep]))
            self.runs[side] = kept
        return []

    # -- state ------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Rows held in state, both inputs."""
        return sum(run.size for runs in self.runs for run in runs)

    def state_bytes(self) -> int:
        """Bytes of the rows held for both inputs."""
        return sum(array_bytes(*r.rows.batch.columns.values(),
                               *(r.rows.batch.validity(c) for c in r.rows.batch.column_names),
                               r.rows.keys, r.rows.hashes, r.rows.ts, r.wm, r.matched)
                   for runs in self.runs for r in runs)

    def _all(self, port: int) -> _Run | None:
        """Input ``port``'s held rows as one run (not in hash order), None when none."""
        runs = self.runs[port]
        if not runs:
            return None
        return runs[0] if len(runs) == 1 else _Run(*_concat_runs(runs, self.xp))

    def _held(self, port: int) -> tuple[Batch, Any, Any, Any] | None:
        run = self._all(port)
        return None if run is None else (run.rows.batch, run.rows.keys, run.rows.ts, None)

    def _load(self, port: int, batch: Batch, keys: Any, ts: Any, starts: Any) -> None:
        self._restored[port] = (batch, keys, ts)  # (held once restore has their flags)

    def snapshot(self) -> dict[str, Any]:
        """:meth:`_JoinBase.snapshot`, with each held row's watermark and matched flag."""
        state = super().snapshot()
        for port, side in enumerate(_SIDES):
            run = self._all(port)
            if run is not None:
                state[f"{side}.wm"] = run.wm
                state[f"{side}.matched"] = run.matched
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (taken on any backend)."""
        super().restore(state)
        if self.how != "inner":
            self.out_dicts["op"] = self.op_dict
        for port, side in enumerate(_SIDES):
            restored = self._restored[port]
            if restored is None:
                continue
            batch, keys, ts = restored
            to_device = self.backend.to_device
            self._hold(port, _Rows(batch, keys, hash_rows(keys, self.backend), ts),
                       to_device(np.asarray(state[f"{side}.wm"], dtype=np.int64)),
                       to_device(np.asarray(state[f"{side}.matched"], dtype=bool)))
            self._restored[port] = None


@dataclass
class _Run:
    """Held rows of one input in hash order, with each row's watermark on arrival and
    whether it has had a partner."""

    rows: _Rows
    wm: Any
    matched: Any

    @property
    def size(self) -> int:
        """Rows in the run."""
        return int(self.rows.ts.shape[0])


def _sorted_run(rows: _Rows, wm: Any, matched: Any, xp: Any) -> _Run:
    order = xp.argsort(rows.hashes, kind="stable")
    return _Run(_Rows(rows.batch.filter(order), rows.keys[:, order], rows.hashes[order],
                      rows.ts[order]), wm[order], matched[order])  # (filter takes indices)


def _concat_runs(runs: list[_Run], xp: Any) -> tuple[_Rows, Any, Any]:
    return (_Rows(Batch.concat([r.rows.batch for r in runs], xp),
                  xp.concatenate([r.rows.keys for r in runs], axis=1),
                  xp.concatenate([r.rows.hashes for r in runs]),
                  xp.concatenate([r.rows.ts for r in runs])),
            xp.concatenate([r.wm for r in runs]), xp.concatenate([r.matched for r in runs]))


#: the side output of each input's late rows
_LATE = ("late", "late_right")
