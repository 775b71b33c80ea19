"""Stream-table (lookup) joins: ``Stream.join_table(table, on=..., how=...)``.

The table is read whole from its bounded source when the pipeline starts and keyed by
its key columns. Rows later in the source replace earlier rows of the same key (upsert
order). On the CPU each key gets a dense id (:class:`gpustream.kernels.join_index.
KeyIndex`) and the table's columns are held by id: a batch of the stream is one probe
of the map (prefetching ahead, the key's id is the row to gather) and one gather per
column. On the GPU the table is a hash table (:class:`gpustream.state.table.SlotTable`)
moved to the device once, probed by one kernel (:func:`gpustream.kernels.hashtable.
lookup`); the matches' columns are gathered there: no per-row Python, nothing copied
back to the host.

String keys are compared by the table's dictionary codes: the stream's codes are mapped
onto them through an array that grows only when the stream's dictionary does. A row with
a null key matches nothing (as in SQL).

A table kept current by a changelog is checkpointed (:meth:`LookupJoinOp.snapshot`): its
live keys with their rows (compacted: replaced and deleted rows are left out) and its
string dictionaries, as flat numeric arrays; the runtime saves the changelog's offset in
the same checkpoint, so a restart resumes the changelog after the last change the table
holds. A table without a changelog is read again from its source instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.errors import PlanError
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import is_string_type as _is_string
from gpustream.kernels.hashing import widen_keys
from gpustream.kernels.join_index import KeyIndex, grown, last_of_each
from gpustream.operators.base import TwoInputOperator
from gpustream.operators.join import key_words, strings_from_state, strings_state, two_input_state
from gpustream.plan.logical import JoinTableNode, join_columns
from gpustream.state.table import SlotTable, array_bytes

__all__ = ["LookupJoinOp"]


class LookupJoinOp(TwoInputOperator):
    """Joins each batch with the table (see the module docstring).

    Examples
    --------
    >>> import gpustream as gs
    >>> p = gs.Pipeline(engine="cpu")
    >>> cards = p.table(gs.from_arrow({"card": [1, 2], "holder": ["ann", "bo"]}), key="card")
    >>> tx = p.source(gs.from_arrow({"card": [2, 3, 1], "amount": [5.0, 6.0, 7.0]}))
    >>> tx.join_table(cards, on="card", how="left").collect().to_pydict()
    {'card': [2, 3, 1], 'amount': [5.0, 6.0, 7.0], 'holder': ['bo', None, 'ann']}
    """

    def __init__(self, node: JoinTableNode, left: pa.Schema, schema: pa.Schema,
                 backend: Backend) -> None:
        super().__init__()
        if node.table.changelog is None:
            self.ended[1] = True  # one input: the stream
        self.node = node
        self.schema = schema
        self.backend = backend
        self.xp = backend.xp
        self.inner = node.how == "inner"
        right = node.table.schema()
        self.columns = join_columns(node.label, left, right, node.left_on, node.right_on)
        self.string_keys = [_is_string(right.field(r).type) for r in node.right_on]
        self.dicts: dict[str, StringDictionary] = {}
        self._maps: dict[int, tuple[int, int, Any]] = {}
        self._load(right)

    def _load(self, right: pa.Schema) -> None:
        """Read the table and apply its rows as upserts (the last row of a key wins)."""
        self.names = right.names
        self.key_words = len(self.node.right_on)
        self.table = self._new_table()
        empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in right], schema=right)
        first = Batch.from_arrow(empty, self.dicts)
        self.data = {r: self.backend.to_device(first[r]) for r, _ in self.columns}
        self.valid = {r: self.backend.to_device(np.ones(0, dtype=bool)) for r, _ in self.columns}
        #: right columns with a null somewhere (the others need no validity gathered)
        self.has_nulls = {r: False for r, _ in self.columns}
        #: rows the columns hold (GPU: every row applied; CPU: one per key id)
        self.rows = 0
        for sb in self.node.table.source.open():
            if sb.data.num_rows:
                self._apply(sb.data)

    def _new_table(self) -> Any:
        """An empty table: CPU, keys -> dense ids (the ids index the columns); GPU, a
        slot table whose ``row`` column points into the columns."""
        if not self.backend.is_device:
            return _IdTable(self.key_words)
        table = SlotTable(self.key_words, self.xp, self.backend)
        table.add_column("row", np.int64, -1)  # slot -> row of the table's columns
        return table

    def _apply(self, rb: pa.RecordBatch, deletes: Any = None) -> None:
        """Upsert (or, where ``deletes``, delete) the rows of ``rb`` by key, in order."""
        xp = self.xp
        b = Batch.from_arrow(rb.select(self.names), self.dicts)  # strings: the table's codes
        n = b.num_rows
        ok = np.ones(n, dtype=bool)
        for k in self.node.right_on:
            ok &= _valid(b, k)
        keys = widen_keys([np.asarray(b[k]) for k in self.node.right_on], np)
        gone = np.zeros(n, dtype=bool) if deletes is None else np.asarray(deletes, dtype=bool)
        if isinstance(self.table, _IdTable):
            ids = self.table.upsert(keys, ok)
            final = np.flatnonzero(last_of_each(ids, self.table.keys.ids_used))
            at = ids[final]
            self._fit(self.table.keys.id_capacity)
            for r, _ in self.columns:
                self.data[r][at] = np.asarray(b[r])[final]
                self.valid[r][at] = _valid(b, r)[final]
                self.has_nulls[r] = self.has_nulls[r] or b.validity(r) is not None
            self.table.alive[at] = ~gone[final]
            self.rows = self.table.keys.ids_used
            return
        rows = np.flatnonzero(ok).astype(np.int64)
        to_device = self.backend.to_device
        slots = self.backend.to_host(self.table.upsert(to_device(keys), to_device(rows))[0])
        # the last change of a key in this batch wins
        order = rows[np.argsort(slots[rows], kind="stable")]
        last = np.ones(order.shape[0], dtype=bool)
        last[:-1] = slots[order][:-1] != slots[order][1:]
        final = order[last]
        row_ids = np.where(gone[final], -1, self.rows + final)
        self.table.columns["row"][to_device(slots[final])] = to_device(row_ids)
        for r, _ in self.columns:
            self.data[r] = xp.concatenate([self.data[r], to_device(np.asarray(b[r]))])
            self.valid[r] = xp.concatenate([self.valid[r], to_device(_valid(b, r))])
            self.has_nulls[r] = self.has_nulls[r] or b.validity(r) is not None
        self.rows += n

    def _fit(self, n: int) -> None:
        """CPU: room in the columns (held by key id) for ids below ``n``."""
        for r, _ in self.columns:
            self.data[r] = grown(self.data[r], n)
            self.valid[r] = grown(self.valid[r], n)
        self.table.alive = grown(self.table.alive, n, False)

    def _codes(self, stream: StringDictionary, table: StringDictionary | None, codes: Any) -> Any:
        """The stream's codes of a string key as the table's codes (-1: not in the table).

        The source thread grows ``stream`` while this runs: its values are read once (an
        immutable snapshot holding every code of ``codes``) and only what that snapshot
        holds is recorded as mapped. New stream strings are mapped incrementally; a
        table that grew (a changelog) maps them all again.
        """
        values = stream.values  # one read: the snapshot and its length agree
        table_values = None if table is None else table.values
        size = 0 if table_values is None else len(table_values)
        known, known_table, mapping = self._maps.get(id(stream), (0, -1, None))
        if known < len(values) or known_table != size or mapping is None:
            start = known if known_table == size and mapping is not None else 0
            new = values[start:]
            if table_values is None or not size:
                host = np.full(len(new), -1, dtype=np.int64)
            else:
                pos = pc.index_in(new, value_set=table_values)
                host = pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            if start:
                assert mapping is not None
                mapping = self.xp.concatenate([mapping[:start], self.backend.to_device(host)])
            else:
                mapping = self.backend.to_device(host if len(host) else np.full(1, -1, np.int64))
            self._maps[id(stream)] = (len(values), size, mapping)
        return mapping[codes]

    # -- two inputs: the stream (0) and the table's changelog (1) ------------------------
    def input_watermark(self, port: int, watermark: int) -> tuple[list[Batch], int | None]:
        """Only the stream's watermark counts: the changelog has none."""
        if port == 1 or watermark <= self.current:
            return [], None
        self.current = watermark
        return [], watermark

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        if port == 0:
            return self._probe(batch)
        rb = batch.to_arrow()  # a changelog batch: decoded, re-encoded in the table's codes
        col = self.node.table.delete_column
        deletes = None
        if col is not None:
            deletes = pc.fill_null(rb[col], False).to_numpy(zero_copy_only=False)
        self._apply(rb, deletes)
        return []

    # -- checkpoints (a table kept current by a changelog) ---------------------------------
    @property
    def state_rows(self) -> int:
        """Keys the table holds."""
        return int(self.table.live_count)

    def state_bytes(self) -> int:
        """Bytes of the table: its keys and its columns' rows."""
        return self.table.state_bytes() + array_bytes(*self.data.values(), *self.valid.values())

    def snapshot(self) -> dict[str, Any]:
        """The table's live keys and their rows, its dictionaries and the watermark
        (nothing for a table without a changelog: it is read again from its source)."""
        if self.node.table.changelog is None:
            return {}
        state = two_input_state(self)
        if isinstance(self.table, _IdTable):
            rows = self.table.held()
            state["table.keys"] = self.table.keys.keys_of(rows)
        else:
            slots = self.table.live_slots()
            rows = self.table.columns["row"][slots]
            held = rows >= 0  # a deleted key keeps its slot, pointing at no row
            slots, rows = slots[held], rows[held]
            state["table.keys"] = self.table.t_keys[:, slots]
        for r, _ in self.columns:
            state[f"table.col.{r}"] = self.data[r][rows]
            state[f"table.valid.{r}"] = self.valid[r][rows]
        state["table.has_nulls"] = np.array([self.has_nulls[r] for r, _ in self.columns])
        for name, d in self.dicts.items():
            state.update(strings_state(f"table.dictionary.{name}", d.values))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (taken on any backend) in place of the loaded table."""
        if not state:
            return
        if self.node.table.changelog is None:
            raise PlanError(f"{self.node.label}: the checkpoint holds a table kept current "
                            "by a changelog, but this table has none; give this pipeline its "
                            "own checkpoint dir")
        two_input_state(self, state)
        xp, to_device = self.xp, self.backend.to_device
        for name, d in self.dicts.items():
            d.restore(strings_from_state(state, f"table.dictionary.{name}"))
        keys = xp.ascontiguousarray(to_device(state["table.keys"]))
        n = int(keys.shape[1])
        self.table = self._new_table()
        if isinstance(self.table, _IdTable):
            self.table.upsert(keys, None)  # a new map: the keys get ids 0 .. n-1
            self.table.alive = np.ones(n, dtype=bool)
        elif n:
            ids = to_device(np.arange(n, dtype=np.int64))
            slots, _ = self.table.upsert(keys, ids)
            self.table.columns["row"][slots] = ids
        for (r, _), has_nulls in zip(self.columns, state["table.has_nulls"], strict=True):
            self.data[r] = to_device(state[f"table.col.{r}"])
            self.valid[r] = to_device(state[f"table.valid.{r}"])
            self.has_nulls[r] = bool(has_nulls)
        self.rows = n
        self._maps = {}  # stream codes -> the table's: mapped again on the next batch

    def _probe(self, batch: Batch) -> list[Batch]:
        xp = self.xp
        n = batch.num_rows
        if n == 0:
            return []
        cols = []
        missing = None
        for (lname, rname), is_str in zip(zip(self.node.left_on, self.node.right_on, strict=True),
                                          self.string_keys, strict=True):
            values = batch[lname]
            if is_str:
                values = self._codes(batch.dictionaries[lname], self.dicts.get(rname), values)
            valid = batch.validity(lname)
            if valid is not None:
                values = xp.where(valid, values, xp.zeros((), dtype=values.dtype))
                missing = ~valid if missing is None else missing | ~valid
            cols.append(values)
        keys = widen_keys(cols, xp) if self.backend.is_device else key_words(cols, xp)
        if isinstance(self.table, _IdTable):  # the key's id is its row of the columns
            rows = self.table.find(keys, None if missing is None else ~missing)
        else:
            slots = self.table.find(keys)
            if missing is not None:
                slots = xp.where(missing, -1, slots)
            # slot -1 reads the last slot's row, overwritten by the where
            rows = xp.where(slots >= 0, self.table.columns["row"][slots], -1)
        matched: Any = rows >= 0
        if self.inner:  # every kept row matched: no validity from the match
            if not bool(matched.all()):
                batch = batch.filter(matched)
                rows = rows[matched]
            matched, at = None, rows
        else:
            at = xp.maximum(rows, 0)
        columns = {name: batch[name] for name in batch.column_names}
        validity = {name: batch.validity(name) for name in batch.column_names}
        dictionaries = dict(batch.dictionaries)
        for r, o in self.columns:
            if self.rows:
                columns[o] = self.data[r][at]
                if not self.has_nulls[r]:
                    validity[o] = matched
                elif matched is None:
                    validity[o] = self.valid[r][at]
                else:
                    validity[o] = matched & self.valid[r][at]
            else:  # an empty table: every right column is null
                dtype = self.data[r].dtype
                columns[o] = xp.zeros(rows.shape[0], dtype=dtype)
                validity[o] = xp.zeros(rows.shape[0], dtype=bool)
            if r in self.dicts:
                dictionaries[o] = self.dicts[r]
        return [Batch(columns, self.schema, validity, dictionaries, batch.watermarks)]


def _valid(b: Batch, name: str) -> np.ndarray:
    v = b.validity(name)
    return np.ones(b.num_rows, dtype=bool) if v is None else np.asarray(v)


class _IdTable:
    """The CPU's table: keys -> dense ids (the ids index the table's columns), and which
    ids hold a row (a deleted key keeps its id, holding none)."""

    def __init__(self, key_words: int) -> None:
        self.keys = KeyIndex(key_words)
        self.alive = np.zeros(0, dtype=bool)

    @property
    def live_count(self) -> int:
        """Keys held (deleted ones too)."""
        return self.keys.count

    def upsert(self, keys: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Ids of the keys (new ones for new keys; -1 where ``valid`` is False). A
        table's rows are mostly distinct keys: the map grows once for them all."""
        self.keys.reserve(keys.shape[1])
        return self.keys.upsert(keys, valid)[0]

    def find(self, keys: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Ids of the keys that hold a row, else -1 (and where ``valid`` is False)."""
        return self.keys.find(keys, valid, self.alive)

    def held(self) -> np.ndarray:
        """The ids holding a row, ascending."""
        ids = self.keys.alive()
        return ids[self.alive[ids]]

    def state_bytes(self) -> int:
        """Bytes of the map and the flags."""
        return self.keys.state_bytes() + int(self.alive.nbytes)
