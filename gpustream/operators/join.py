"""Joins of two streams: ``interval_join`` and ``window_join`` (DESIGN.md section 3).

On the CPU, candidates come from a key -> dense id map
(:mod:`gpustream.kernels.join_index`): each input's rows are appended, in arrival order,
to row stores, and chained per key (interval joins), per (key, window) (tumbling and
sliding window joins) or per session of a key (session window joins). A new row's
candidates, or a firing window's pairs, are read off those chains: nothing buffered is
sorted again. Rows that leave (their windows fired, the watermark passed their range)
are dropped in one compacting pass once they outnumber the rows held.

On the GPU, each input's rows are buffered on the device and paired by a hash join:
rows are grouped by the 64-bit hash of their key words (:func:`gpustream.kernels.
hashing.hash_rows`), the buffer sorted by it, each probe row's candidates found by binary
search, expanded by the count-then-write kernel (:func:`gpustream.kernels.join.
expand_pairs`, skew-balanced) in chunks of bounded size, and kept when their key words
are equal and their times fit. No per-row Python on either backend.

Lateness is decided per event from the row's own stream (its watermark as of its
arrival), and state is evicted by the join's watermark (the smaller of its inputs'),
so the pairs found never depend on how the streams are cut into batches or interleave.
String keys are compared through one dictionary owned by the join.

Checkpoints (:meth:`_JoinBase.snapshot`) hold each input's buffered rows (the columns the
output needs, their validity, key words and times; a window join's window starts too,
one row per assignment), the inputs' watermarks and ended flags, and as flat numeric
arrays the strings of the join's key dictionary and of the buffered rows' string
columns: the runtime restores source dictionaries by column name, which cannot tell two
inputs' same-named columns apart, so the join carries its own. A snapshot restores on
any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.ingest.dictionary import StringDictionary
from gpustream.kernels.hashing import hash_rows, widen_keys
from gpustream.kernels.join import expand_pairs
from gpustream.kernels.join_index import (
    COMPACT_AFTER,
    IntervalIndex,
    SessionIndex,
    WindowShards,
    cpu_threads,
    grown,
    window_on_time,
)
from gpustream.operators.base import TwoInputOperator
from gpustream.state.table import array_bytes

__all__ = ["IntervalJoinOp", "JoinSpec", "WindowJoinOp", "key_words", "strings_from_state",
           "strings_state", "two_input_state"]

#: candidates expanded at once (bounds the memory of a skewed key's pairs)
CHUNK_PAIRS = 1 << 22


@dataclass(frozen=True)
class JoinSpec:
    """The physical description of a two-stream join, in event-time units."""

    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    #: the inputs' event-time columns ("": none, for a regular join without retention)
    left_ts: str
    right_ts: str
    right_cols: tuple[tuple[str, str], ...]  # (right name, output name)
    schema: pa.Schema
    string_keys: tuple[bool, ...]
    idleness_s: tuple[float | None, float | None] = (None, None)
    #: what to add to each input's event-time column to get its rows' event times (-1
    #: where it is a window's ``window_end``: :func:`gpustream.plan.time_shift`)
    time_shift: tuple[int, int] = (0, 0)


@dataclass
class _Rows:
    """Buffered rows of one input: columns, validity, key words, key hashes, times."""

    batch: Batch
    keys: Any   # uint64[K, n]
    hashes: Any  # uint64[n] (device buffers; None on the CPU)
    ts: Any     # int64[n]


class _Store:
    """One input's rows on the host, in arrival order: the columns the join keeps (with
    their validity) and the event times (the event-time column itself where it is
    kept), in arrays that grow geometrically and are compacted by the keep masks of
    the join's index (rows renumbered from 0), or lose the rows below a number (rows
    keep their numbers: ``base`` is the number of the first one stored).

    Examples
    --------
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, None, 3], "y": [4, 5, 6]}))
    >>> st = _Store(["x"], "y")
    >>> st.append(b, b["y"]), st.append(b, b["y"] - 3)
    (0, 3)
    >>> st.compact(np.array([True, True, False, False, True, True]))
    >>> st.view(pa.schema([("x", pa.int64())])).to_arrow().to_pydict(), st.times().tolist()
    ({'x': [1, None, None, 3]}, [4, 5, 2, 3])
    >>> st.drop_before(2); st.base, st.times().tolist(), st.times(np.array([3])).tolist()
    (2, [2, 3], [3])
    >>> st.append(b, b["y"])
    4
    """

    def __init__(self, names: list[str], ts_name: str) -> None:
        self.names = names
        #: the column holding the event times: a kept one, or a column of its own
        self.ts_name = ts_name if ts_name in names else ""
        self.n = 0  # rows stored
        self.base = 0  # the number of the first
        self.cols: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}

    def times(self, rows: Any = None) -> np.ndarray:
        """The stored rows' event times (or those of the rows numbered ``rows``)."""
        ts = self.cols.get(self.ts_name, np.empty(0, dtype=np.int64))
        return ts[: self.n] if rows is None else ts[rows - self.base]

    def append(self, batch: Batch, ts: Any) -> int:
        """Append the rows of ``batch`` (its kept columns) with their times; returns the
        number of the first."""
        first = self.base + self.n
        base, m = self.n, batch.num_rows
        need = base + m
        values: dict[str, Any] = {name: batch[name] for name in self.names}
        if not self.ts_name:
            values[""] = ts
        for name, v in values.items():
            col = self.cols.get(name)
            col = grown(np.empty(0, dtype=v.dtype) if col is None else col, need)
            col[base:need] = v
            self.cols[name] = col
            valid = batch.validity(name) if name else None
            held = self.valid.get(name)
            if valid is not None and held is None:
                held = np.ones(base, dtype=bool)
            if held is not None:
                held = grown(held, need)
                held[base:need] = True if valid is None else valid
                self.valid[name] = held
        self.n = need
        return first

    def compact(self, keep: np.ndarray) -> None:
        """Keep the rows where ``keep`` (one flag per stored row), in order, numbered from
        0; give back memory once the arrays are four times what the rows stored since
        the last compaction needed."""
        n = int(np.count_nonzero(keep))
        for group in (self.cols, self.valid):
            for name, a in group.items():
                group[name] = self._kept(a, a[: self.n][keep], n)
        self.n, self.base = n, 0

    def drop_before(self, first: int) -> None:
        """Drop the rows numbered below ``first``; the others keep their numbers."""
        k = min(first - self.base, self.n)
        if k <= 0:
            return
        n = self.n - k
        for group in (self.cols, self.valid):
            for name, a in group.items():
                group[name] = self._kept(a, a[k: self.n], n)
        self.n, self.base = n, self.base + k

    def _kept(self, a: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
        """``a`` with ``kept`` (``n`` rows) at its start: in place, or a smaller copy
        once ``a`` is four times what the rows stored since the last compaction
        needed."""
        if a.shape[0] > 4 * max(self.n, COMPACT_AFTER):
            return grown(kept, self.n)
        a[:n] = kept  # (numpy copies overlapping ranges as if through a buffer)
        return a

    def view(self, schema: pa.Schema, rows: Any = None) -> Batch:
        """The rows held (or the stored rows numbered ``rows``) as a batch of
        ``schema``."""
        n = self.n
        at = None if rows is None else rows - self.base
        cols = {f.name: np.empty(0, dtype=physical_dtype(f.type, column=f.name))
                if f.name not in self.cols else self.cols[f.name][:n] if at is None
                else self.cols[f.name][at] for f in schema}
        valid = {name: v[:n] if at is None else v[at] for name, v in self.valid.items()
                 if name}
        return Batch(cols, schema, valid)

    def state_bytes(self) -> int:
        """Bytes of its arrays."""
        return array_bytes(*self.cols.values(), *self.valid.values())


def key_words(columns: list[Any], xp: Any) -> Any:
    """:func:`~gpustream.kernels.hashing.widen_keys`, without a copy for one contiguous
    64-bit integer column on the host (a view of it).

    Examples
    --------
    >>> col = np.array([5, -1])
    >>> words = key_words([col], np)
    >>> words.tolist(), np.shares_memory(words, col)
    ([[5, 18446744073709551615]], True)
    """
    if (len(columns) == 1 and isinstance(columns[0], np.ndarray)
            and columns[0].dtype in (np.int64, np.uint64) and columns[0].flags.c_contiguous):
        return columns[0].view(np.uint64)[None, :]
    return widen_keys(columns, xp)


def strings_state(prefix: str, values: pa.Array) -> dict[str, np.ndarray]:
    """Strings (a dictionary's values, no nulls) as two flat numeric arrays for a
    checkpoint: ``<prefix>.offsets`` (int64, one more than the strings) and
    ``<prefix>.data`` (their UTF-8 bytes, uint8).

    Examples
    --------
    >>> import pyarrow as pa
    >>> st = strings_state("d", pa.array(["ab", "", "c"]).slice(1))
    >>> st["d.offsets"].tolist(), st["d.data"].tolist()
    ([0, 0, 1], [99])
    >>> strings_from_state(st, "d").to_pylist()
    ['', 'c']
    """
    values = values.cast(pa.large_string())
    if values.null_count:
        raise ValueError(f"checkpoint {prefix}: a dictionary holds no nulls, got "
                         f"{values.null_count}")
    n = len(values)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.zeros(n + 1, dtype=np.int64) if offsets_buf is None else np.frombuffer(
        offsets_buf, dtype=np.int64, count=values.offset + n + 1)[values.offset:]
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.zeros(0, dtype=np.uint8) if data_buf is None or hi == lo else \
        np.frombuffer(data_buf, dtype=np.uint8, count=hi)[lo:]
    return {f"{prefix}.offsets": offsets - lo, f"{prefix}.data": data.copy()}


def strings_from_state(state: dict[str, Any], prefix: str) -> pa.Array:
    """The strings :func:`strings_state` saved under ``prefix``, as a ``large_string``
    array.

    Examples
    --------
    >>> import pyarrow as pa
    >>> strings_from_state(strings_state("k", pa.array(["x", "yz"])), "k").to_pylist()
    ['x', 'yz']
    """
    offsets = np.ascontiguousarray(state[f"{prefix}.offsets"], dtype=np.int64)
    data = np.ascontiguousarray(state[f"{prefix}.data"], dtype=np.uint8)
    return pa.Array.from_buffers(pa.large_string(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def two_input_state(op: TwoInputOperator, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A two-input operator's watermarks (each input's, and the combined one it passed
    on) and ended flags for a checkpoint; with ``state``, load them from it instead.

    Examples
    --------
    >>> a, b = TwoInputOperator(), TwoInputOperator()
    >>> _ = a.input_watermark(0, 70), a.input_watermark(1, 40), a.input_ended(1)
    >>> _ = two_input_state(b, two_input_state(a))
    >>> b.wm == a.wm, b.ended, b.current
    (True, [False, True], 70)
    """
    if state is None:
        return {"inputs.watermark": np.array(op.wm, dtype=np.int64),
                "inputs.ended": np.array(op.ended, dtype=bool),
                "watermark": np.array([op.current], dtype=np.int64)}
    op.wm = [int(w) for w in state["inputs.watermark"]]
    op.ended = [bool(e) for e in state["inputs.ended"]]
    op.current = int(state["watermark"][0])
    return state


class _JoinBase(TwoInputOperator):
    #: columns the operator adds after the inputs' (a window join's window bounds)
    added_columns = 0
    #: each input's buffered rows (left, right) on the GPU
    state: list[_Rows | None]

    def __init__(self, spec: JoinSpec, backend: Backend) -> None:
        super().__init__(spec.idleness_s)
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self.dicts = [StringDictionary() for _ in spec.left_on]
        self._maps: dict[tuple[int, int], tuple[int, Any]] = {}
        self.late_events = 0
        self.out_dicts: dict[str, StringDictionary] = {}
        self.state = [None, None]
        #: each input's rows on the CPU (the join's index holds their row numbers)
        # (a shifted time is not the column's value: the store keeps it apart)
        self.stores = [_Store([f.name for f, _ in self._kept(port)],
                              "" if spec.time_shift[port] else
                              spec.left_ts if port == 0 else spec.right_ts) for port in (0, 1)]
        #: the watermark passed on before the one firing now: the per-row watermark of
        #: the rows emitted (their event times are at or above it)
        self.passed = self.current
        self._schemas = [pa.schema([f for f, _ in self._kept(port)]) for port in (0, 1)]

    # -- keys -----------------------------------------------------------------------------
    def _codes(self, c: int, stream: StringDictionary, codes: Any) -> Any:
        """A stream's codes of string key ``c`` in the join's own dictionary."""
        values = stream.values  # one read: the source thread may grow it meanwhile
        known, mapping = self._maps.get((c, id(stream)), (0, None))
        if mapping is None or known < len(values):
            new = self.backend.to_device(self.dicts[c].encode(values[known:])[0].astype(np.int64))
            if mapping is None:
                mapping = new if len(new) else self.backend.to_device(np.zeros(1, np.int64))
            else:
                mapping = self.xp.concatenate([mapping[:known], new])
            self._maps[(c, id(stream))] = (len(values), mapping)
        return mapping[codes]

    def times(self, port: int, batch: Batch) -> Any:
        """The event times of ``batch``'s rows on input ``port`` (zeros for an input
        without event time: a regular join without retention reads none)."""
        name = self.spec.left_ts if port == 0 else self.spec.right_ts
        if not name:
            return self.xp.zeros(batch.num_rows, dtype=np.int64)
        shift = self.spec.time_shift[port]
        return batch[name] + shift if shift else batch[name]

    def _rows(self, port: int, batch: Batch) -> _Rows | None:
        """The batch's on-time rows with a full key, ready to buffer or probe (their key
        hashes only on the GPU, whose buffers are grouped by them)."""
        xp = self.xp
        names = self.spec.left_on if port == 0 else self.spec.right_on
        ts_name = self.spec.left_ts if port == 0 else self.spec.right_ts
        ts = self.times(port, batch)
        keep = self._on_time(batch, ts)
        for name in names:
            v = batch.validity(name)
            if v is not None:
                keep = keep & v
        tv = batch.validity(ts_name) if ts_name else None
        if tv is not None:
            keep = keep & tv
        if not bool(keep.all()):
            batch = batch.filter(keep)
            ts = ts[keep]
        if batch.num_rows == 0:
            return None
        cols = []
        for c, name in enumerate(names):
            values = batch[name]
            if self.spec.string_keys[c]:
                values = self._codes(c, batch.dictionaries[name], values)
            cols.append(values)
        keys = widen_keys(cols, xp) if self.backend.is_device else key_words(cols, xp)
        for name, d in batch.dictionaries.items():
            out = name if port == 0 else dict(self.spec.right_cols).get(name)
            if out is not None:
                self.out_dicts[out] = d
        hashes = hash_rows(keys, self.backend) if self.backend.is_device else None
        return _Rows(batch, keys, hashes, ts)

    def _on_time(self, batch: Batch, ts: Any) -> Any:
        raise NotImplementedError

    # -- pairing (GPU) ----------------------------------------------------------------------
    def _pairs(self, probe: _Rows, build: _Rows, fits: Any,
               presorted: bool = False) -> list[tuple[Any, Any]]:
        """(probe row, build row) index pairs with equal keys for which ``fits(p, b)``
        (``presorted``: the build rows are in hash order already)."""
        xp = self.xp
        order = xp.arange(build.hashes.shape[0]) if presorted else \
            xp.argsort(build.hashes, kind="stable")
        sorted_h = build.hashes if presorted else build.hashes[order]
        # searching sorted needles walks the build side once instead of jumping about
        p_order = xp.argsort(probe.hashes)
        needles = probe.hashes[p_order]
        lo = xp.empty_like(p_order)
        hi = xp.empty_like(p_order)
        lo[p_order] = xp.searchsorted(sorted_h, needles, side="left")
        hi[p_order] = xp.searchsorted(sorted_h, needles, side="right")
        counts = (hi - lo).astype(np.int64)
        out: list[tuple[Any, Any]] = []
        total_before = xp.cumsum(counts)
        n = counts.shape[0]
        start = 0
        while start < n:  # chunks of probe rows with at most CHUNK_PAIRS candidates
            base = int(total_before[start - 1]) if start else 0
            stop = int(xp.searchsorted(total_before, base + CHUNK_PAIRS, side="right"))
            stop = max(stop, start + 1)
            p, pos = expand_pairs(counts[start:stop], lo[start:stop], self.backend)
            p = p + start
            b = order[pos]
            same = xp.all(probe.keys[:, p] == build.keys[:, b], axis=0)
            ok = same & fits(p, b)
            out.append((p[ok], b[ok]))
            start = stop
        return out

    def _emit(self, left: Batch, li: Any, right: Batch, ri: Any,
              extra: dict[str, Any] | None = None) -> Batch:
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        for name in left.column_names:
            columns[name] = left[name][li]
            v = left.validity(name)
            validity[name] = None if v is None else v[li]
        for r, o in self.spec.right_cols:
            columns[o] = right[r][ri]
            v = right.validity(r)
            validity[o] = None if v is None else v[ri]
        for name, values in (extra or {}).items():
            columns[name] = values
        dicts = {k: v for k, v in self.out_dicts.items() if k in columns}
        n = next(iter(columns.values())).shape[0]
        return Batch(columns, self.spec.schema, validity, dicts,
                     self.xp.full(n, self.passed, dtype=np.int64))

    def _stored(self, port: int) -> Batch:
        """Input ``port``'s stored rows (CPU) as a batch."""
        return self.stores[port].view(self._schemas[port])

    def _due_compaction(self, side: int) -> bool:
        """Whether input ``side``'s stored rows have doubled since they were last
        compacted (so that compacting costs O(1) per row, amortised)."""
        return self.stores[side].n >= 2 * self._compacted[side] + COMPACT_AFTER

    def _compact(self, keeps: list[np.ndarray | None]) -> None:
        """Keep the stored rows of each input where its mask (if any) says."""
        for side, keep in enumerate(keeps):
            if keep is not None:
                self.stores[side].compact(keep)
                self._compacted[side] = self.stores[side].n

    # -- checkpoints ----------------------------------------------------------------------
    def _kept(self, port: int) -> list[tuple[pa.Field, str]]:
        """The buffered columns a checkpoint keeps, as (input field, output name): every
        left column, and the right columns that the output has."""
        schema = self.spec.schema
        if port == 0:
            n = len(schema) - len(self.spec.right_cols) - self.added_columns
            return [(schema.field(i), schema.field(i).name) for i in range(n)]
        return [(pa.field(r, schema.field(o).type), o) for r, o in self.spec.right_cols]

    def _index_bytes(self) -> int:
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes of the rows buffered for both inputs (and, on the CPU, of the index)."""
        if not self.backend.is_device:
            return sum(s.state_bytes() for s in self.stores) + self._index_bytes()
        return sum(array_bytes(*s.batch.columns.values(),
                               *(s.batch.validity(c) for c in s.batch.column_names),
                               s.keys, s.hashes, s.ts)
                   for s in self.state if s is not None) + array_bytes(*getattr(self, "starts", ()))

    def _held(self, port: int) -> tuple[Batch, Any, Any, Any] | None:
        """Input ``port``'s rows in state: (rows, key words, times, window starts or
        None), one row per window assignment; None when it holds none."""
        rows = self.state[port]
        return None if rows is None else (rows.batch, rows.keys, rows.ts, None)

    def snapshot(self) -> dict[str, Any]:
        """Each input's buffered rows, the key dictionary, the watermarks and ended flags
        (device arrays; the runtime copies them to the host)."""
        state = two_input_state(self)
        for c, d in enumerate(self.dicts):
            if self.spec.string_keys[c]:
                state.update(strings_state(f"keys.dictionary.{c}", d.values))
        for port in (0, 1):
            held = self._held(port)
            if held is None:
                continue
            batch, keys, ts, starts = held
            side = _SIDES[port]
            state[f"{side}.keys"] = keys
            state[f"{side}.ts"] = ts
            if starts is not None:
                state[f"{side}.starts"] = starts
            for f, out in self._kept(port):
                state[f"{side}.col.{f.name}"] = batch[f.name]
                valid = batch.validity(f.name)
                if valid is not None:
                    state[f"{side}.valid.{f.name}"] = valid
                if out in self.out_dicts:
                    state.update(strings_state(f"{side}.dictionary.{f.name}",
                                               self.out_dicts[out].values))
        return state

    def _load(self, port: int, batch: Batch, keys: Any, ts: Any, starts: Any) -> None:
        """Take restored rows of input ``port`` into state."""
        raise NotImplementedError

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (taken on any backend)."""
        two_input_state(self, state)
        self.passed = self.current
        to_device = self.backend.to_device
        self.dicts = [StringDictionary(strings_from_state(state, f"keys.dictionary.{c}"))
                      if is_str else StringDictionary()
                      for c, is_str in enumerate(self.spec.string_keys)]
        self._maps = {}  # stream codes -> the join's: rebuilt from the restored dictionary
        self._reset()
        for port, side in enumerate(_SIDES):
            if f"{side}.ts" not in state:
                continue
            fields, columns, validity, dicts = [], {}, {}, {}
            for f, out in self._kept(port):
                fields.append(f)
                columns[f.name] = to_device(state[f"{side}.col.{f.name}"])
                valid = state.get(f"{side}.valid.{f.name}")
                validity[f.name] = None if valid is None else to_device(valid)
                if f"{side}.dictionary.{f.name}.offsets" in state:
                    # until the input sends again: its strings as of the checkpoint (the
                    # stream's restored dictionary starts with them: same codes)
                    d = StringDictionary(strings_from_state(state, f"{side}.dictionary.{f.name}"))
                    dicts[f.name] = self.out_dicts[out] = d
            keys = self.xp.ascontiguousarray(to_device(state[f"{side}.keys"]))
            starts = state.get(f"{side}.starts")
            self._load(port, Batch(columns, pa.schema(fields), validity, dicts), keys,
                       to_device(state[f"{side}.ts"]),
                       None if starts is None else to_device(starts))

    def _reset(self) -> None:
        """Empty state (before a restore)."""
        self.state = [None, None]
        self.stores = [_Store(s.names, s.ts_name or "") for s in self.stores]
        self._compacted = [0, 0]  # each input's rows stored after its last compaction


_SIDES = ("left", "right")


def _concat(a: _Rows | None, b: _Rows | None, xp: Any) -> _Rows | None:
    if a is None:
        return b
    if b is None:
        return a
    batch = Batch.concat([a.batch, b.batch], xp)
    return _Rows(batch, xp.concatenate([a.keys, b.keys], axis=1),
                 xp.concatenate([a.hashes, b.hashes]), xp.concatenate([a.ts, b.ts]))


def _take(rows: _Rows, keep: Any) -> _Rows | None:
    if not bool(keep.any()):
        return None
    return _Rows(rows.batch.filter(keep), rows.keys[:, keep], rows.hashes[keep], rows.ts[keep])


class IntervalJoinOp(_JoinBase):
    """Pairs with ``right.ts`` in ``[left.ts + lower, left.ts + upper]``, emitted as soon as
    the second of the two arrives; a row leaves the state once no future row of the other
    input can match it (the join's watermark has passed its range)."""

    def __init__(self, spec: JoinSpec, lower: int, upper: int, backend: Backend) -> None:
        super().__init__(spec, backend)
        self.lower, self.upper = lower, upper
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self.index = IntervalIndex(len(self.spec.left_on), self.lower, self.upper)

    def _on_time(self, batch: Batch, ts: Any) -> Any:
        wm = batch.watermarks
        late = ts < wm if wm is not None else self.xp.zeros(batch.num_rows, dtype=bool)
        self.late_events += int(late.sum())
        return ~late

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        self.seen(port)
        rows = self._rows(port, batch)
        if rows is None:
            return []
        if self.backend.is_device:
            return self._process_sorted(port, rows)
        # this input's rows join their keys' chains; their candidates are the other
        # input's chains of those keys (appending first changes no candidate)
        self.stores[port].append(rows.batch, rows.ts)
        kids = self.index.append(port, rows.keys, rows.ts)
        out = []
        other = self._stored(1 - port)
        for p, b in self.index.probe(port, kids, rows.ts, CHUNK_PAIRS):
            if p.shape[0]:
                if port == 0:
                    out.append(self._emit(rows.batch, p, other, b))
                else:
                    out.append(self._emit(other, b, rows.batch, p))
        return out

    def _process_sorted(self, port: int, rows: _Rows) -> list[Batch]:
        other = self.state[1 - port]
        out = []
        if other is not None:
            if port == 0:  # probe: left rows; build: buffered right rows
                def fits(p: Any, b: Any) -> Any:
                    d = other.ts[b] - rows.ts[p]
                    return (d >= self.lower) & (d <= self.upper)
            else:
                def fits(p: Any, b: Any) -> Any:
                    d = rows.ts[p] - other.ts[b]
                    return (d >= self.lower) & (d <= self.upper)
            for p, b in self._pairs(rows, other, fits):
                if p.shape[0]:
                    if port == 0:
                        out.append(self._emit(rows.batch, p, other.batch, b))
                    else:
                        out.append(self._emit(other.batch, b, rows.batch, p))
        self.state[port] = _concat(self.state[port], rows, self.xp)
        return out

    def on_watermark(self, watermark: int) -> list[Batch]:
        self.passed = watermark  # (pairs found from now on are at or above it)
        if not self.backend.is_device:
            self.index.evict(watermark)
            if self._due_compaction(0) or self._due_compaction(1):
                self._compact(list(self.index.compact()))
            return []
        left, right = self.state
        if left is not None:  # future right rows have ts >= watermark
            self.state[0] = _take(left, left.ts + self.upper >= watermark)
        if right is not None:  # future left rows have ts >= watermark
            self.state[1] = _take(right, right.ts - self.lower >= watermark)
        return []

    def _index_bytes(self) -> int:
        return self.index.state_bytes()

    def _held(self, port: int) -> tuple[Batch, Any, Any, Any] | None:
        if self.backend.is_device:
            return super()._held(port)
        keep = self.index.held_rows(port)
        if not bool(keep.any()):
            return None
        rows = np.flatnonzero(keep)
        return (self.stores[port].view(self._schemas[port], rows),
                self.index.held_keys(port, keep), self.stores[port].times(rows), None)

    def _load(self, port: int, batch: Batch, keys: Any, ts: Any, starts: Any) -> None:
        if self.backend.is_device:
            self.state[port] = _Rows(batch, keys, hash_rows(keys, self.backend), ts)
            return
        self.stores[port].append(batch, ts)
        self.index.append(port, keys, ts)

    @property
    def buffered(self) -> int:
        """Rows held in state, both inputs."""
        if not self.backend.is_device:
            return self.index.held
        return sum(0 if s is None else s.batch.num_rows for s in self.state)


class WindowJoinOp(_JoinBase):
    """Every pair with equal keys in the same window (tumbling, sliding, or sessions
    formed by both inputs' rows together), emitted when the join's watermark passes the
    window's end; the window's rows are dropped then."""

    added_columns = 2  # window_start, window_end

    def __init__(self, spec: JoinSpec, size: int, slide: int, offset: int, gap: int,
                 backend: Backend) -> None:
        super().__init__(spec, backend)
        self.size, self.slide, self.offset, self.gap = size, slide, offset, gap
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self.starts: list[Any] = [None, None]  # GPU: per buffered assignment, its window start
        k = len(self.spec.left_on)
        self.index: WindowShards | SessionIndex = SessionIndex(k, self.gap) if self.gap else \
            WindowShards(k, self.size, self.slide, self.offset, cpu_threads())

    def _on_time(self, batch: Batch, ts: Any) -> Any:
        xp = self.xp
        wm = batch.watermarks
        if wm is None:
            return xp.ones(batch.num_rows, dtype=bool)
        if self.gap:  # sessions: a row below its stream's watermark (it could otherwise
            late = ts < wm  # join a session that has already fired)
        elif not self.backend.is_device:  # the last window of the row has fired: one pass
            keep, n_late = window_on_time(ts, wm, self.size, self.slide, self.offset)
            self.late_events += n_late
            return keep
        else:  # the last window of the row has fired
            last = ts - (ts - self.offset) % self.slide
            late = last + self.size <= wm
        self.late_events += int(late.sum())
        return ~late

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        self.seen(port)
        rows = self._rows(port, batch)
        if rows is None:
            return []
        if not self.backend.is_device:
            store = self.stores[port]
            if isinstance(self.index, SessionIndex):
                self.index.insert(port, rows.keys, rows.ts, store.append(rows.batch, rows.ts))
            else:  # the rows are stored while the shards index them
                self.index.insert(port, rows.keys, rows.ts, rows.batch.watermarks,
                                  store.base + store.n, alongside=lambda: store.append(
                                      rows.batch, rows.ts))
            return []
        xp = self.xp
        if self.gap:
            self.state[port] = _concat(self.state[port], rows, xp)
            return []
        nwin = self.size // self.slide
        last = rows.ts - (rows.ts - self.offset) % self.slide
        wm = rows.batch.watermarks
        for j in range(nwin):  # one assignment per (row, window) that has not fired
            start = last - j * self.slide
            keep = start + self.size > wm if wm is not None else xp.ones_like(start, dtype=bool)
            part = _take(rows, keep)
            if part is None:
                continue
            self.state[port] = _concat(self.state[port], part, xp)
            self.starts[port] = start[keep] if self.starts[port] is None else \
                xp.concatenate([self.starts[port], start[keep]])
        return []

    def on_watermark(self, watermark: int) -> list[Batch]:
        out = self._fire(watermark)  # (rows of the windows it closes: end - 1 >= passed)
        self.passed = watermark
        return out

    def _fire(self, watermark: int) -> list[Batch]:
        if not self.backend.is_device:
            return self._fire_index(watermark)
        if self.gap:
            return self._fire_sessions(watermark)
        left, right = self.state
        if left is None or right is None:
            self._drop_fired(watermark)
            return []
        xp = self.xp
        ls, rs = self.starts
        lf = ls + self.size <= watermark
        rf = rs + self.size <= watermark
        out = []
        if bool(lf.any()) and bool(rf.any()):
            lt = _take(left, lf)
            rt = _take(right, rf)
            assert lt is not None and rt is not None
            lst, rst = ls[lf], rs[rf]
            # the window start is part of the key: hash it in
            lk = _Rows(lt.batch, xp.concatenate([lt.keys, lst.view(np.uint64)[None, :]]),
                       hash_rows(xp.concatenate([lt.keys, lst.view(np.uint64)[None, :]]),
                                 self.backend), lt.ts)
            rk = _Rows(rt.batch, xp.concatenate([rt.keys, rst.view(np.uint64)[None, :]]),
                       hash_rows(xp.concatenate([rt.keys, rst.view(np.uint64)[None, :]]),
                                 self.backend), rt.ts)
            for p, b in self._pairs(lk, rk, lambda p, b: xp.ones(p.shape[0], dtype=bool)):
                if p.shape[0]:
                    out.append(self._emit(lt.batch, p, rt.batch, b, {
                        "window_start": lst[p], "window_end": lst[p] + self.size}))
        self._drop_fired(watermark)
        return out

    def _fire_index(self, watermark: int) -> list[Batch]:
        """CPU: the pairs of every window (session) the watermark closes, off the index's
        chains; then the rows no window holds any more leave, once they are many."""
        out = []
        left, right = self._stored(0), self._stored(1)
        if isinstance(self.index, SessionIndex):
            for li, ri, first, end in self.index.fire(watermark, CHUNK_PAIRS):
                out.append(self._emit(left, li, right, ri,
                                      {"window_start": first, "window_end": end}))
            self._compact([self.index.compact(side) if self._due_compaction(side) else None
                           for side in (0, 1)])
            return out

        def emit(li: Any, ri: Any, start: Any) -> Batch:
            return self._emit(left, li, right, ri,
                              {"window_start": start, "window_end": start + self.size})
        stores = self.stores
        out = self.index.fire(watermark, CHUNK_PAIRS, emit, (stores[0].base, stores[1].base))
        for side, store in enumerate(stores):
            # the rows below the lowest one an open window holds are held no more: drop
            # them once they are as many as the rows after them (so that a row is copied
            # O(1) times, amortised)
            first = self.index.first_row(side)
            first = store.base + store.n if first is None else first
            dead = first - store.base
            if dead >= max(store.n - dead, COMPACT_AFTER):
                store.drop_before(first)
        return out

    def _drop_fired(self, watermark: int) -> None:
        for side in (0, 1):
            rows, starts = self.state[side], self.starts[side]
            if rows is None:
                continue
            keep = starts + self.size > watermark
            self.state[side] = _take(rows, keep)
            self.starts[side] = starts[keep] if self.state[side] is not None else None

    def _fire_sessions(self, watermark: int) -> list[Batch]:
        """Sessions over both inputs' rows of a key: a new one starts where consecutive
        rows are ``gap`` or more apart; a session whose end (last + gap) the watermark
        has reached fires, pairing its left rows with its right rows."""
        xp = self.xp
        left, right = self.state
        if left is None and right is None:
            return []
        parts = [r for r in (left, right) if r is not None]
        h = xp.concatenate([r.hashes for r in parts])
        keys = xp.concatenate([r.keys for r in parts], axis=1)
        ts = xp.concatenate([r.ts for r in parts])
        # order by key (hash, then words) and time
        order = xp.lexsort(xp.stack([ts, *[keys[c] for c in range(keys.shape[0] - 1, -1, -1)], h]))
        sk, sts = keys[:, order], ts[order]
        new_key = xp.ones(order.shape[0], dtype=bool)
        new_key[1:] = xp.any(sk[:, 1:] != sk[:, :-1], axis=0)
        new_sess = new_key.copy()
        new_sess[1:] |= (sts[1:] - sts[:-1]) >= self.gap
        sid_sorted = xp.cumsum(new_sess) - 1
        # rows are in (key, time) order, so a session is a run of rows: its first and
        # last times are those of its first and last rows (no scatter-min/max, which cupy
        # has not for int64)
        begins = xp.flatnonzero(new_sess)
        ends = xp.empty_like(begins)
        ends[:-1] = begins[1:] - 1
        ends[-1] = order.shape[0] - 1
        first, last_t = sts[begins], sts[ends]
        sid = xp.empty_like(sid_sorted)
        sid[order] = sid_sorted
        fired = last_t + self.gap <= watermark
        row_fired = fired[sid]
        out = []
        n_left = 0 if left is None else left.ts.shape[0]
        if left is not None and right is not None and bool(row_fired.any()):
            lsid, rsid = sid[:n_left], sid[n_left:]
            lf, rf = row_fired[:n_left], row_fired[n_left:]
            lt, rt = _take(left, lf), _take(right, rf)
            if lt is not None and rt is not None:
                lsv = lsid[lf].astype(np.int64)
                rsv = rsid[rf].astype(np.int64)
                lk = _Rows(lt.batch, lsv.view(np.uint64)[None, :],
                           hash_rows(lsv.view(np.uint64)[None, :], self.backend), lt.ts)
                rk = _Rows(rt.batch, rsv.view(np.uint64)[None, :],
                           hash_rows(rsv.view(np.uint64)[None, :], self.backend), rt.ts)
                for p, b in self._pairs(lk, rk, lambda p, b: xp.ones(p.shape[0], dtype=bool)):
                    if p.shape[0]:
                        s = lsv[p]
                        out.append(self._emit(lt.batch, p, rt.batch, b, {
                            "window_start": first[s], "window_end": last_t[s] + self.gap}))
        if left is not None:
            self.state[0] = _take(left, ~row_fired[:n_left])
        if right is not None:
            self.state[1] = _take(right, ~row_fired[n_left:])
        return out

    def _index_bytes(self) -> int:
        return self.index.state_bytes()

    def _held(self, port: int) -> tuple[Batch, Any, Any, Any] | None:
        if self.backend.is_device:
            held = super()._held(port)
            return None if held is None else (*held[:3], self.starts[port] if not self.gap
                                              else None)
        store = self.stores[port]
        if isinstance(self.index, SessionIndex):
            rows, keys = self.index.held_rows(port)
            starts = None
        else:
            rows, keys, starts = self.index.held_entries(port)
        if not rows.shape[0]:
            return None
        return store.view(self._schemas[port], rows), keys, store.times(rows), starts

    def _load(self, port: int, batch: Batch, keys: Any, ts: Any, starts: Any) -> None:
        if self.backend.is_device:
            self.state[port] = _Rows(batch, keys, hash_rows(keys, self.backend), ts)
            self.starts[port] = starts
            return
        base = self.stores[port].append(batch, ts)
        if isinstance(self.index, SessionIndex):
            self.index.insert(port, keys, ts, base)
        else:  # one assignment per restored row: its window start as saved
            self.index.insert(port, keys, starts, None, base, nwin=1)

    @property
    def buffered(self) -> int:
        """Row assignments held in state, both inputs."""
        if not self.backend.is_device:
            return self.index.held
        return sum(0 if s is None else s.batch.num_rows for s in self.state)


def string_key_flags(left: pa.Schema, on: tuple[str, ...]) -> tuple[bool, ...]:
    """Which key columns are strings (compared by the join's dictionary codes)."""
    return tuple(bool(pa.types.is_string(left.field(n).type)
                      or pa.types.is_large_string(left.field(n).type)) for n in on)

