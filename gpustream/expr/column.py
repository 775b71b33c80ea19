"""An evaluated expression: :class:`Column` (values, validity, dictionary for strings)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from gpustream.ingest.dictionary import StringDictionary

__all__ = ["Column", "and_valid"]


class Column(NamedTuple):
    """An evaluated expression: values, validity (None = no nulls), dictionary for strings.

    Examples
    --------
    >>> import numpy as np
    >>> Column(np.arange(3), None).valid is None
    True
    """

    values: Any
    valid: Any | None
    dictionary: StringDictionary | None = None


def and_valid(xp: ModuleType, a: Any | None, b: Any | None) -> Any | None:
    """Both validities (None: all valid) as one.

    Examples
    --------
    >>> import numpy as np
    >>> and_valid(np, None, np.array([True, False])).tolist()
    [True, False]
    >>> and_valid(np, np.array([True, True]), np.array([False, True])).tolist()
    [False, True]
    """
    if a is None:
        return b
    if b is None:
        return a
    return xp.logical_and(a, b)
