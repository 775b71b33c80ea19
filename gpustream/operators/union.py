"""``union``: the rows of several streams with the same columns, as they arrive.

Rows pass through unchanged but for two things that make them one stream:

- **Strings** are codes into a dictionary per stream; the union gives each string column
  one dictionary of its own and maps each input's codes into it (a code map per input
  dictionary, grown as that dictionary grows: one gather per batch, no string touched
  twice).
- **Watermarks**: the union's watermark is the smallest of its inputs' (as a join's,
  :class:`~gpustream.operators.base.TwoInputOperator`, idleness included), and so is
  each row's: a row of input ``p`` carries the smaller of its own watermark (as of its
  arrival on its stream) and the other inputs' watermarks when it arrives. Both only
  move forward, and a row that is on time on its own stream is on time in the union,
  so windows after a union never depend on how the inputs are cut into batches or
  interleave, as long as each input's rows are on time on their own.

Checkpoints hold the inputs' watermarks and ended flags and the union's dictionaries.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import is_string_type
from gpustream.operators.base import TwoInputOperator
from gpustream.operators.recode import Recoder
from gpustream.watermark import NO_WATERMARK

__all__ = ["UnionOp"]


class UnionOp(TwoInputOperator):
    """Rows of ``len(inputs)`` streams (ports 0, 1, ...) as one stream of ``schema``.

    Parameters
    ----------
    schema
        The output schema (the first input's).
    inputs
        Each input's schema (the same columns, possibly in another order).
    idleness_s
        Per input: how long it may send nothing before it stops holding back the
        watermark (None: forever).
    backend
        Where the batches live.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.backend import select_backend
    >>> schema = pa.schema([("k", pa.string()), ("ts", pa.int64())])
    >>> op = UnionOp(schema, [schema, schema], (None, None), select_backend("cpu"))
    >>> a = Batch.from_arrow(pa.record_batch({"k": ["x", "y"], "ts": [5, 9]}))
    >>> b = Batch.from_arrow(pa.record_batch({"k": ["y"], "ts": [3]}))
    >>> a.watermarks, b.watermarks = np.array([0, 5]), np.array([1])
    >>> _ = op.input_watermark(1, 2)               # the second input's watermark: 2
    >>> out = op.process_port(0, a)[0]
    >>> out.to_arrow().to_pydict(), out.watermarks.tolist()
    ({'k': ['x', 'y'], 'ts': [5, 9]}, [0, 2])
    >>> out = op.process_port(1, b)[0]
    >>> out["k"].tolist(), out.to_arrow().to_pydict()["k"]   # one dictionary for both
    ([1], ['y'])
    """

    def __init__(self, schema: pa.Schema, inputs: list[pa.Schema],
                 idleness_s: tuple[float | None, ...], backend: Backend) -> None:
        super().__init__(idleness_s)  # type: ignore[arg-type]
        n = len(inputs)
        self.inputs = n
        self.wm = [NO_WATERMARK] * n
        self.ended = [False] * n
        self.last_seen = [time.monotonic()] * n
        self.schema = schema
        self.backend = backend
        self.xp = backend.xp
        #: the union's own dictionary of each string column (decodes its output)
        self.recoder = Recoder([f.name for f in schema if is_string_type(f.type)], backend)

    def owned_dictionaries(self) -> dict[str, StringDictionary]:
        """The union's dictionary of each string column."""
        return self.recoder.dictionaries

    def _others(self, port: int) -> int | None:
        """The smallest watermark of the inputs other than ``port`` that hold the
        union's watermark back now (None: none does)."""
        now = time.monotonic()
        held = [w for p, w in enumerate(self.wm)
                if p != port and not self.ended[p]
                and (self.idleness_s[p] is None
                     or now - self.last_seen[p] < self.idleness_s[p])]  # type: ignore[operator]
        return min(held) if held else None

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        """Input ``port``'s rows as the union's: its columns in the union's order, its
        strings in the union's dictionaries, its watermarks held to the other inputs'."""
        self.seen(port)
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        for f in self.schema:
            values = batch[f.name]
            if f.name in self.recoder.dictionaries:
                values = self.recoder.recode(f.name, batch.dictionaries.get(f.name), values)
            columns[f.name] = values
            validity[f.name] = batch.validity(f.name)
        wm = batch.watermarks
        others = self._others(port)
        if wm is not None and others is not None:
            wm = self.xp.minimum(wm, others)
        if wm is not None and self.current != NO_WATERMARK:
            # an input that was idle (left out of the union's watermark) resumes below
            # it: its rows are late for what already fired downstream, not on time
            wm = self.xp.maximum(wm, self.current)
        return [Batch(columns, self.schema, validity, self.recoder.dictionaries, wm)]

    def snapshot(self) -> dict[str, Any]:
        """The inputs' watermarks and ended flags, and the union's dictionaries."""
        from gpustream.operators.join import two_input_state

        state = two_input_state(self)
        state.update(self.recoder.snapshot("dictionary"))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        from gpustream.operators.join import two_input_state

        two_input_state(self, state)
        self.recoder.restore(state, "dictionary")
