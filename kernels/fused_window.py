"""What the CPU's fused window loop is built from: its key hash, shards and code blocks.

The separate kernels (:mod:`~gpustream.kernels.windows`, ``hashing``, ``hashtable``,
``aggregate``) suit the GPU, where each is one thread per assignment. On a CPU core
every extra pass re-reads the batch and re-touches the state at random, so for the
common aggregations (``count``, ``sum``, ``min``, ``max``, ``mean``, ``var``, ``std``:
:data:`FUSED_KINDS`) :mod:`gpustream.kernels.fused_dense` generates, per query shape, a
single ``numba.njit`` loop over the events that does all of it on pages of packed rows.
This module holds the pieces of that loop's text (:class:`FusedAgg`: one aggregation's
columns; the lines that read an event's key words and inputs, probe a key table and fold
every aggregate with all loads before any store), its key hash and the shard of a key.

The hash is a 64-bit multiply-xorshift (:func:`fused_hash_rows`), cheaper than the
32-bit-lane :func:`~gpustream.kernels.hashing.hash_row` that the GPU kernels share with
the simulator. A key table filled by the loop is only probed by the loop and rebuilt from
its own stored hashes; a snapshot restored there gets its hashes recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.kernels.cache import CACHE
from gpustream.kernels.hashtable import EMPTY, TOMBSTONE
from gpustream.kernels.prefetch import PREFETCH_DISTANCE, _prefetch
from gpustream.kernels.windows import window_start

__all__ = ["FUSED_KINDS", "FusedAgg", "fused_hash_rows", "key_shards"]

_MUL = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_SEED64 = np.uint64(0x2545F4914F6CDD1D)
_S29 = np.uint64(29)
_S32 = np.uint64(32)


@register_jitable
def _mix_word(h, w):  # type: ignore[no-untyped-def]
    return (h ^ w) * _MUL


@register_jitable
def _finish(h):  # type: ignore[no-untyped-def]
    h ^= h >> _S32
    h *= _MUL2
    h ^= h >> _S29
    if h < np.uint64(2):  # 0 and 1 mark empty and freed slots
        h += np.uint64(2)
    return h


@numba.njit(nogil=True, cache=CACHE)
def _hash_rows(keys, out):  # type: ignore[no-untyped-def]
    for i in range(out.shape[0]):
        h = _SEED64
        for c in range(keys.shape[0]):
            h = _mix_word(h, keys[c, i])
        out[i] = _finish(h)


def fused_hash_rows(keys: Any) -> Any:
    """The fused loop's hash of each row of ``keys`` (``uint64[k, n]``: key words, null
    bits, window start), as stored in its table.

    Examples
    --------
    >>> import numpy as np
    >>> h = fused_hash_rows(np.array([[1, 2, 1], [0, 0, 0], [10, 10, 10]], dtype=np.uint64))
    >>> bool(h[0] == h[2]), bool(h[0] != h[1]), bool((h > 1).all())
    (True, True, True)
    """
    out = np.empty(keys.shape[1], dtype=np.uint64)
    _hash_rows(np.ascontiguousarray(keys, dtype=np.uint64), out)
    return out


@numba.njit(nogil=True, cache=CACHE)
def _shard_of(words, bits, out):  # type: ignore[no-untyped-def]
    shift = np.uint64(64 - bits)
    for i in range(words.shape[1]):
        h = _SEED64
        for c in range(words.shape[0]):
            h = _mix_word(h, words[c, i])
        out[i] = np.uint8(_finish(h) >> shift)


def key_shards(words: Any, bits: int) -> Any:
    """The shard (0 .. 2**bits - 1) of each row of ``words`` (``uint64[k, n]``: the key
    columns' words and their null bits, no window start), from the top bits of
    :func:`fused_hash_rows`: every window of a key lives in one shard.

    Examples
    --------
    >>> import numpy as np
    >>> words = np.array([np.arange(1000), np.zeros(1000)], dtype=np.uint64)
    >>> s = key_shards(words, 1)
    >>> sorted(set(s.tolist())), 400 < int(s.sum()) < 600, int(key_shards(words, 0).max())
    ([0, 1], True, 0)
    >>> bool((s == fused_hash_rows(words) >> np.uint64(63)).all())
    True
    """
    shard = np.zeros(words.shape[1], dtype=np.uint8)
    if bits:
        _shard_of(words, bits, shard)
    return shard


#: aggregation kinds the fused loop folds
FUSED_KINDS = frozenset({"count", "count_valid", "sum", "min", "max", "mean", "var", "std"})


@dataclass(frozen=True)
class FusedAgg:
    """One aggregation of the fused loop.

    ``kind`` is ``count``, ``count_valid``, ``sum``, ``min``, ``max`` or ``moments``
    (mean, var, std); ``columns`` names its own table columns in the order the kind uses
    them: ``(n,)``, ``()``, ``(acc,)``, ``(acc,)``, ``(acc,)``, ``(s1, s2, pivot)``.
    ``counts`` names the column counting its non-null inputs, which it increments; None
    for ``count`` and where aggregations of the same input share that column and an
    earlier one increments it.
    """

    kind: str
    columns: tuple[str, ...]
    counts: str | None = None
    #: the aggregation whose input array (same column, same dtype) this one reads: each
    #: input value and its validity are loaded once per event; None: its own
    source: int | None = None


def _update_lines(j: int, agg: FusedAgg, ref: dict[str, str]) -> tuple[list[str], list[str],
                                                                   list[str], list[str]]:
    """Lines of aggregation ``j``: run when a slot is created; loading the slot's fields
    into locals; folding event ``i`` into them; storing them back. ``ref`` gives each
    column's element of the slot as source text (``C3[s]``).

    Every aggregation loads before any stores: the columns may share memory (a packed
    table's rows), so a store between loads would make the compiler reload the fields
    after it.
    """
    names = list(agg.columns) + ([agg.counts] if agg.counts else [])
    c = [ref[name] for name in names]
    f = [f"f{j}_{k}" for k in range(len(c))]
    v = j if agg.source is None else agg.source
    ok, x = f"ok{v}", f"x{v}"  # loaded once per event by _input_lines
    kind = agg.kind
    init: list[str] = []
    loads = [f"{f[k]} = {c[k]}" for k in range(len(c))]
    stores = [f"{c[k]} = {f[k]}" for k in range(len(c))]
    if kind == "count":
        fold = [f"{f[0]} += 1"]
    elif kind in ("count_valid", "sum", "min", "max", "moments"):
        fold = [f"if {ok}:"]
        if kind == "sum":
            fold.append(f"    {f[0]} += {x}")
        elif kind in ("min", "max"):
            cmp = "<" if kind == "min" else ">"
            fold += [f"    if {x} {cmp} {f[0]}:", f"        {f[0]} = {x}"]
        elif kind == "moments":
            init = [f"{c[2]} = {x} if {ok} and np.isfinite({x}) else 0.0"]
            fold += [f"    d{j} = {x} - {f[2]}", f"    {f[0]} += d{j}",
                     f"    {f[1]} += d{j} * d{j}"]
            del stores[2]  # the pivot is only read
        if agg.counts:
            fold.append(f"    {f[-1]} += 1")
        if len(fold) == 1:
            fold.append("    pass")
    else:
        raise ValueError(f"the fused loop has no aggregation {kind!r}")
    return init, loads, fold, stores


def _input_lines(aggs: tuple[FusedAgg, ...]) -> list[str]:
    """Each distinct input's value and validity for event ``i``, as locals ``x{v}`` and
    ``ok{v}`` (``count`` reads no input)."""
    lines: list[str] = []
    for j, agg in enumerate(aggs):
        if agg.kind != "count" and agg.source is None:
            lines += [f"x{j} = V{j}[i]", f"ok{j} = V{j}ok.shape[0] == 0 or V{j}ok[i]"]
    return lines


def _word_lines(n_keys: int) -> list[str]:
    """Event ``i``'s key words ``w{c}`` (0 where null) and null bits ``nb``."""
    lines = ["nb = ZERO"]
    for c in range(n_keys):
        lines += [f"w{c} = K{c}[i]",
                  f"if K{c}ok.shape[0] != 0 and not K{c}ok[i]:",
                  f"    w{c} = ZERO",
                  f"    nb |= np.uint64({1 << c})"]
    return lines


def _probe_lines(slot: str, stored: str, same: str) -> list[str]:
    """Linear probing from ``slot`` for hash ``h`` (``stored``: the hash held by ``slot``,
    as source text) whose key words satisfy ``same``: sets ``found`` (``slot`` then holds
    the key) or stops at an empty slot, remembering the first freed one met in ``tomb``
    (-1: none) for an insert to reuse."""
    return ["tomb = np.int64(-1)",
            "found = False",
            "while True:",
            f"    th = {stored}",
            "    if th == EMPTY:",
            "        break",
            f"    if th == h and {same}:",
            "        found = True",
            "        break",
            "    if th == TOMBSTONE and tomb < 0:",
            f"        tomb = np.int64({slot})",
            f"    {slot} = ({slot} + ONE) & mask"]


def _agg_blocks(aggs: tuple[FusedAgg, ...], ref: dict[str, str]) -> tuple[list[str], list[str]]:
    """Every aggregation's lines for a new slot, and its loads, folds and stores of event
    ``i`` into the slot (all loads before any store: see :func:`_update_lines`); ``ref``
    gives each column's element of the slot as source text."""
    init: list[str] = []
    loads: list[str] = []
    folds: list[str] = []
    stores: list[str] = []
    for j, agg in enumerate(aggs):
        new, load, fold, store = _update_lines(j, agg, ref)
        init += new
        loads += load
        folds += fold
        stores += store
    return init, [*loads, *folds, *stores]


#: the generated loops' module header: the names their text uses
_PRELUDE = ('"""A loop generated by gpustream.kernels.fused_window: the hash of this text names '
            'this file."""\n\n'
            "from gpustream.kernels.fused_window import _NAMESPACE\n\n"
            "globals().update(_NAMESPACE)\n\n\n")

_NAMESPACE = {
    "np": np, "window_start": window_start, "_mix_word": _mix_word, "_finish": _finish,
    "EMPTY": EMPTY, "TOMBSTONE": TOMBSTONE, "ZERO": np.uint64(0), "ONE": np.uint64(1),
    "SEED64": _SEED64, "_prefetch": _prefetch, "PF": PREFETCH_DISTANCE, "I64_MAX": np.int64(np.iinfo(np.int64).max), "I64_MIN": np.int64(np.iinfo(np.int64).min),
}
