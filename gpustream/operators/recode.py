"""String columns re-coded into dictionaries an operator owns (and checkpoints).

A string column is int32 codes into a :class:`~gpustream.ingest.dictionary.StringDictionary`.
Where an operator's output strings come from dictionaries that a restart would not
rebuild with the same codes (a union of several inputs' dictionaries; a column computed
from two string columns, a CASE over strings, ``strftime``: their dictionaries grow in
arrival order), the operator re-codes them into a dictionary of its own per output
column, which it snapshots, so that codes held in state downstream (window keys, join
keys) mean the same strings after a restore. Each source dictionary's entries are mapped
once, as it grows; a batch costs one gather of its codes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.ingest.dictionary import StringDictionary

__all__ = ["Recoder"]


class Recoder:
    """The owned dictionary of each named string column, and the maps into them.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.backend import select_backend
    >>> r = Recoder(["s"], select_backend("cpu"))
    >>> a, b = StringDictionary(), StringDictionary()
    >>> ca, _ = a.encode(pa.array(["x", "y"]))
    >>> cb, _ = b.encode(pa.array(["y", "z"]))
    >>> r.recode("s", a, ca).tolist(), r.recode("s", b, cb).tolist()
    ([0, 1], [1, 2])
    >>> state = r.snapshot("dict")
    >>> fresh = Recoder(["s"], select_backend("cpu"))
    >>> fresh.restore(state, "dict")
    >>> fresh.dictionaries["s"].values.to_pylist()
    ['x', 'y', 'z']
    """

    def __init__(self, names: list[str], backend: Backend) -> None:
        self.backend = backend
        #: the owned dictionary of each column (decodes the operator's output)
        self.dictionaries = {name: StringDictionary() for name in names}
        #: (column, id(source dictionary)) -> (it, how many of its strings are mapped,
        #: the map): two columns read from one dictionary map into their own
        self._maps: dict[tuple[str, int], tuple[StringDictionary, int, Any]] = {}

    def recode(self, name: str, source: StringDictionary | None, codes: Any) -> Any:
        """``codes`` into ``source`` as codes into column ``name``'s own dictionary
        (``source`` None: the column is all null, its codes are returned as they are)."""
        if source is None:
            return codes
        values = source.values  # one read: the source's thread may grow it meanwhile
        held = self._maps.get((name, id(source)))
        known, mapping = (held[1], held[2]) if held is not None and held[0] is source else (
            0, None)
        if mapping is None or known < len(values):
            new = self.dictionaries[name].encode(values[known:])[0]
            new = self.backend.to_device(new if len(new) or known else np.zeros(1, np.int32))
            mapping = new if mapping is None else self.backend.xp.concatenate(
                [mapping[:known], new])
            self._maps[(name, id(source))] = (source, len(values), mapping)
        return mapping[codes]

    def snapshot(self, prefix: str) -> dict[str, np.ndarray]:
        """The owned dictionaries' strings, as checkpoint arrays under ``prefix``."""
        from gpustream.operators.join import strings_state

        state: dict[str, np.ndarray] = {}
        for i, d in enumerate(self.dictionaries.values()):
            state.update(strings_state(f"{prefix}{i}", d.values))
        return state

    def restore(self, state: dict[str, Any], prefix: str) -> None:
        """Put back what :meth:`snapshot` saved (a column it lacks starts empty)."""
        from gpustream.operators.join import strings_from_state

        for i, d in enumerate(self.dictionaries.values()):
            if f"{prefix}{i}.offsets" in state:
                d.restore(strings_from_state(state, f"{prefix}{i}"))
        self._maps.clear()
