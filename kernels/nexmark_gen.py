"""The Nexmark generator's kernels: one njit pass per kind over a range of events.

Pure arithmetic over arrays (no I/O): :mod:`gpustream.ingest.nexmark` calls them. Every
random number depends only on (seed, event number, draw), through splitmix64, so the
output never depends on how the range is cut. Strings come out as ASCII matrices (one
row per event, trimmed by a ``[lo, hi)`` range per row) that :func:`pack` turns into
Arrow's offsets and bytes without a copy per row, or as indices into a dictionary made
once (:func:`url_dictionary`, :func:`extra_pool`).

Random strings follow nexmark's ``StringsGenerator.nextString(max, special)``: 3 to
``max - 1`` characters, each ``special`` with probability 1/13, else a letter, spaces
trimmed at both ends. A string's length and characters come from a stream of its own,
seeded by (seed, event, draw), so a string of any length costs one draw of its event.
"""

from __future__ import annotations

import numba
import numpy as np

from gpustream.kernels.cache import CACHE

__all__ = ["M1", "auctions", "bids", "extra_pool", "pack", "persons", "url_dictionary"]

FIRST_ID = 1000
ID_LEAD = 10
HOT_BLOCK = 100
NUM_CHANNELS = 10_000
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
#: keeps a string's character stream apart from the event's draws
_STREAM = np.uint64(0xD6E8FEB86659FD93)
#: bytes of a bid, an auction and a person that are not strings (nexmark's currentSize)
BID_FIXED = 8 + 8 + 8 + 8
AUCTION_FIXED = 8 + 8 + 8 + 8 + 8 + 8
PERSON_FIXED = 8
#: a character of random text from a draw q < 13 * 26: the special one (a space, or
#: ``_`` in urls) for q < 26, else a letter
_SPACED = np.where(np.arange(13 * 26) < 26, 32, 97 + np.arange(13 * 26) % 26).astype(np.uint8)
_UNDERSCORED = np.where(np.arange(13 * 26) < 26, 95, 97 + np.arange(13 * 26) % 26).astype(
    np.uint8)
#: the first bytes of a padding string (entries of one size differ by where they start)
_POOL_STRIDE = 61


@numba.njit(inline="always")
def _mix(z):  # type: ignore[no-untyped-def]
    """splitmix64's finalizer: a 64-bit hash of ``z``."""
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _unit(z):  # type: ignore[no-untyped-def]
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _uniform(seed, event, draw):  # type: ignore[no-untyped-def]
    """A uniform in [0, 1) that depends only on (seed, event, draw): splitmix64."""
    return _unit(_mix(seed + np.uint64(event * 64 + draw + 1) * _GOLDEN))


@numba.njit(inline="always")
def _pick(u, n):  # type: ignore[no-untyped-def]
    return min(np.int64(u * n), n - 1)


@numba.njit(inline="always")
def _text(seed, e, draw, max_len, special, out, row, col0):  # type: ignore[no-untyped-def]
    """nexmark's ``nextString(max_len, special)`` into ``out[row, col0:]``; returns the
    ``[lo, hi)`` columns it spans once spaces are trimmed. It may write up to 2 columns
    past ``col0 + max_len - 1``: ``out`` must have them."""
    n = 3 + _pick(_uniform(seed, e, draw), max_len - 3)
    s = _mix((seed + np.uint64(e * 64 + draw + 1) * _GOLDEN) ^ _STREAM)
    table = _SPACED if special == 32 else _UNDERSCORED
    m = np.uint64(0x1FFFFF)
    w = np.uint64(13 * 26)
    for k in range(0, n, 3):  # three characters from each 64-bit draw, 21 bits each
        z = _mix(s + np.uint64(k // 3 + 1) * _GOLDEN)  # (up to 2 past the end: slack)
        out[row, col0 + k] = table[((z & m) * w) >> np.uint64(21)]
        out[row, col0 + k + 1] = table[(((z >> np.uint64(21)) & m) * w) >> np.uint64(21)]
        out[row, col0 + k + 2] = table[(((z >> np.uint64(42)) & m) * w) >> np.uint64(21)]
    lo, hi = col0, col0 + n
    if special == 32:  # Java's trim()
        while lo < hi and out[row, lo] == 32:
            lo += 1
        while hi > lo and out[row, hi - 1] == 32:
            hi -= 1
    return lo, hi


@numba.njit(inline="always")
def _extra(seed, e, draw, current, avg, lo, hi, variants):  # type: ignore[no-untyped-def]
    """The :func:`extra_pool` entry of nexmark's ``nextExtra(current, avg)``: its size
    as nexmark draws it (within 20% of ``avg - current``; empty past ``avg``), one of
    ``variants`` strings of that size."""
    z = _mix(seed + np.uint64(e * 64 + draw + 1) * _GOLDEN)  # one draw: its top 53 bits
    size = 0  # pick the size, its low 11 bits the variant
    if current <= avg:
        want = avg - current
        delta = np.int64(np.floor(want * 0.2 + 0.5))  # Java's Math.round
        size = want - delta
        if delta > 0:
            size += _pick(_unit(z), 2 * delta)
    size = min(max(size, lo), hi)
    variant = np.int64(((z & np.uint64(0x7FF)) * np.uint64(variants)) >> np.uint64(11))
    return np.int32((size - lo) * variants + variant)


@numba.njit(inline="always")
def _bids_before(x, total, pp, ap):  # type: ignore[no-untyped-def]
    """How many of the events 0..x-1 are bids."""
    epoch, off = divmod(x, total)
    return epoch * (total - pp - ap) + max(off - pp - ap, 0)


@numba.njit(nogil=True, cache=CACHE, parallel=True)
def bids(first, last, seed, total, pp, ap, in_flight, active, hot_a, hot_b, delay_us, base,  # type: ignore[no-untyped-def]
         avg, extra_lo, extra_hi, variants, auction, bidder, price, channel, ts, extra):
    """Bids among events ``first..last``, in event order; returns how many.

    Each bid's output row is known from its event number, so both cores fill rows.
    ``channel`` indexes the channel names (and, the same index, their urls); ``extra``
    indexes the bid padding of :func:`extra_pool` (``extra_lo..extra_hi`` bytes,
    ``variants`` strings of each size).
    """
    start = _bids_before(first, total, pp, ap)
    n = _bids_before(last, total, pp, ap) - start
    for e in numba.prange(first, last):
        epoch, off = divmod(e, total)
        if off < pp + ap:
            continue
        i = _bids_before(e, total, pp, ap) - start
        last_person = epoch * pp + pp - 1
        last_auction = epoch * ap + ap - 1
        if _pick(_uniform(seed, e, 0), hot_a) > 0:
            a = (last_auction // HOT_BLOCK) * HOT_BLOCK
        else:
            lo = max(last_auction - in_flight, 0)
            a = lo + _pick(_uniform(seed, e, 1), last_auction - lo + 1 + ID_LEAD)
        if _pick(_uniform(seed, e, 2), hot_b) > 0:
            b = (last_person // HOT_BLOCK) * HOT_BLOCK + 1
        else:
            people = last_person + 1
            act = min(people, active)
            b = people - act + _pick(_uniform(seed, e, 3), act + ID_LEAD)
        auction[i] = a + FIRST_ID
        bidder[i] = b + FIRST_ID
        price[i] = np.int64(np.rint(10.0 ** (_uniform(seed, e, 4) * 6.0) * 100.0))
        ch = _pick(_uniform(seed, e, 5), 2 * NUM_CHANNELS)
        channel[i] = ch % 4 if ch < NUM_CHANNELS else 4 + ch % NUM_CHANNELS
        ts[i] = base + np.int64(e * delay_us) // 1000
        extra[i] = _extra(seed, e, 6, BID_FIXED, avg, extra_lo, extra_hi, variants)
    return n


@numba.njit(inline="always")
def _last_person(e, total, pp):  # type: ignore[no-untyped-def]
    epoch, off = divmod(e, total)
    return epoch * pp + min(off, pp - 1)


@numba.njit(inline="always")
def _next_person(seed, e, draw, total, pp, active):  # type: ignore[no-untyped-def]
    people = _last_person(e, total, pp) + 1
    act = min(people, active)
    return people - act + _pick(_uniform(seed, e, draw), act + ID_LEAD)


@numba.njit(inline="always")
def _price(u):  # type: ignore[no-untyped-def]
    return np.int64(np.rint(10.0 ** (u * 6.0) * 100.0))


@numba.njit(nogil=True, cache=CACHE)
def persons(first, last, seed, total, pp, n_first, n_last, n_city, n_state, delay_us, base,  # type: ignore[no-untyped-def]
            first_len, last_len, city_len, avg, extra_lo, extra_hi, variants,
            ids, first_name, last_name, city, state, email, email_len, card, ts, extra):
    """People among events ``first..last``: ids, name/city/state indices, email (nexmark's
    ``nextString(7) @ nextString(5) .com``, ``email_len`` bytes of each row), card
    (``dddd dddd dddd dddd``) and the :func:`extra_pool` index of the padding that brings
    the person to ``avg`` bytes on average (``*_len``: the names' and cities' lengths)."""
    n = 0
    for epoch in range(first // total, (last + total - 1) // total):
        for j in range(pp):
            e = epoch * total + j
            if e < first or e >= last:
                continue
            ids[n] = _last_person(e, total, pp) + FIRST_ID
            first_name[n] = _pick(_uniform(seed, e, 0), n_first)
            last_name[n] = _pick(_uniform(seed, e, 1), n_last)
            city[n] = _pick(_uniform(seed, e, 2), n_city)
            state[n] = _pick(_uniform(seed, e, 3), n_state)
            lo, hi = _text(seed, e, 4, 7, 32, email, n, 0)  # user: columns 0..5
            k = 0
            for c in range(lo, hi):  # moved to the front (columns only go left)
                email[n, k] = email[n, c]
                k += 1
            email[n, k] = 64  # @
            lo, hi = _text(seed, e, 5, 5, 32, email, n, 11)  # domain: columns 11..16
            for c in range(lo, hi):
                k += 1
                email[n, k] = email[n, c]
            for c in range(4):  # .com
                email[n, k + 1 + c] = (46, 99, 111, 109)[c]
            email_len[n] = k + 5
            for k in range(16):  # dddd dddd dddd dddd
                card[n, k + k // 4] = 48 + _pick(_uniform(seed, e, 16 + k), 10)
            card[n, 4] = 32
            card[n, 9] = 32
            card[n, 14] = 32
            ts[n] = base + np.int64(e * delay_us) // 1000
            size = (PERSON_FIXED + first_len[first_name[n]] + 1 + last_len[last_name[n]]
                    + email_len[n] + 19 + city_len[city[n]] + 2)
            extra[n] = _extra(seed, e, 32, size, avg, extra_lo, extra_hi, variants)
            n += 1
    return n


@numba.njit(nogil=True, cache=CACHE)
def auctions(first, last, seed, total, pp, ap, active, hot_s, ahead, delay_us, base,  # type: ignore[no-untyped-def]
             avg, extra_lo, extra_hi, variants,
             ids, name, name_lo, name_hi, desc, desc_lo, desc_hi, initial, reserve, ts,
             expires, seller, category, extra):
    """Auctions among events ``first..last``; ``ahead``: events until 100 more auctions.

    ``name`` is nexmark's ``nextString(20)``, ``desc`` its ``nextString(100)`` (each row's
    text in columns ``[*_lo, *_hi)``); ``extra`` the :func:`extra_pool` index of the
    padding that brings the auction to ``avg`` bytes on average.
    """
    n = 0
    for epoch in range(first // total, (last + total - 1) // total):
        for off in range(pp, pp + ap):
            e = epoch * total + off
            if e < first or e >= last:
                continue
            ids[n] = epoch * ap + (off - pp) + FIRST_ID
            if _pick(_uniform(seed, e, 0), hot_s) > 0:
                seller[n] = (_last_person(e, total, pp) // HOT_BLOCK) * HOT_BLOCK + FIRST_ID
            else:
                seller[n] = _next_person(seed, e, 1, total, pp, active) + FIRST_ID
            initial[n] = _price(_uniform(seed, e, 2))
            reserve[n] = initial[n] + _price(_uniform(seed, e, 3))
            t = base + np.int64(e * delay_us) // 1000
            horizon = base + np.int64((e + ahead) * delay_us) // 1000 - t
            ts[n] = t
            expires[n] = t + 1 + _pick(_uniform(seed, e, 4), max(horizon * 2, 1))
            category[n] = 10 + _pick(_uniform(seed, e, 5), 5)
            name_lo[n], name_hi[n] = _text(seed, e, 6, 20, 32, name, n, 0)
            desc_lo[n], desc_hi[n] = _text(seed, e, 7, 100, 32, desc, n, 0)
            size = AUCTION_FIXED + name_hi[n] - name_lo[n] + desc_hi[n] - desc_lo[n]
            extra[n] = _extra(seed, e, 8, size, avg, extra_lo, extra_hi, variants)
            n += 1
    return n


@numba.njit(nogil=True, cache=CACHE)
def pack(chars, lo, hi, n):  # type: ignore[no-untyped-def]
    """Arrow's int32 offsets and bytes of the strings ``chars[i, lo[i]:hi[i]]``, i < n.

    Examples
    --------
    >>> import numpy as np
    >>> chars = np.array([[32, 97, 98, 32], [120, 121, 122, 33]], np.uint8)
    >>> offsets, data = pack(chars, np.array([1, 0]), np.array([3, 3]), 2)
    >>> offsets.tolist(), bytes(data)
    ([0, 2, 5], b'abxyz')
    """
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    for i in range(n):
        offsets[i + 1] = offsets[i] + hi[i] - lo[i]
    data = np.empty(offsets[n], np.uint8)
    for i in range(n):
        data[offsets[i]:offsets[i + 1]] = chars[i, lo[i]:hi[i]]
    return offsets, data


@numba.njit(nogil=True, cache=CACHE)
def extra_pool(seed, lo, hi, variants):  # type: ignore[no-untyped-def]
    """Padding strings (Arrow offsets, bytes): entry ``(size - lo) * variants + v`` has
    ``size`` random letters, for each size in ``lo..hi`` and ``v < variants``.

    Entries of one size start ``_POOL_STRIDE`` letters apart in one random text, as
    nexmark cuts its padding from one random megabyte.

    Examples
    --------
    >>> import numpy as np
    >>> offsets, data = extra_pool(np.uint64(1), 2, 3, 2)
    >>> np.diff(offsets).tolist()
    [2, 2, 3, 3]
    >>> bytes(data[:2]) != bytes(data[2:4]), bytes(data).isalpha()
    (True, True)
    """
    text = np.empty((variants - 1) * _POOL_STRIDE + max(hi, 1), np.uint8)
    for k in range(len(text)):
        text[k] = 97 + _pick(_uniform(seed, k // 64, k % 64), 26)
    n = (hi - lo + 1) * variants
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    for j in range(n):
        offsets[j + 1] = offsets[j] + lo + j // variants
    data = np.empty(offsets[n], np.uint8)
    for j in range(n):
        start = (j % variants) * _POOL_STRIDE
        data[offsets[j]:offsets[j + 1]] = text[start:start + offsets[j + 1] - offsets[j]]
    return offsets, data


@numba.njit(inline="always")
def _put(out, row, col, text):  # type: ignore[no-untyped-def]
    for k in range(len(text)):
        out[row, col + k] = text[k]
    return col + len(text)


@numba.njit(nogil=True, cache=CACHE)
def url_dictionary(seed, n_hot, n_channels, head, tail, param):  # type: ignore[no-untyped-def]
    """nexmark's bid urls (Arrow offsets, bytes): ``n_hot`` base urls for the hot
    channels, then channel ``i``'s: a base url, with ``param`` and Java's
    ``Math.abs(Integer.reverse(i))`` after it for 9 channels in 10.

    A base url is ``head`` + three ``nextString(5, '_')`` parts, each followed by ``/``,
    + ``tail``.

    Examples
    --------
    >>> import numpy as np
    >>> b = lambda s: np.frombuffer(s, np.uint8)
    >>> offsets, data = url_dictionary(np.uint64(3), 1, 2, b(b"u/"), b(b"q"), b(b"&id="))
    >>> [bytes(data[offsets[i]:offsets[i + 1]]).count(b"/") for i in range(3)]
    [4, 4, 4]
    """
    n = n_hot + n_channels
    width = len(head) + 3 * 5 + len(tail) + len(param) + 11
    out = np.empty((n, width), np.uint8)
    lo = np.zeros(n, np.int64)
    hi = np.empty(n, np.int64)
    for j in range(n):
        col = _put(out, j, 0, head)
        for part in range(3):
            _, b = _text(seed, j, part, 5, 95, out, j, col)  # '_': nothing trimmed
            out[j, b] = 47  # /
            col = b + 1
        col = _put(out, j, col, tail)
        if j >= n_hot and _pick(_uniform(seed, j, 3), 10) > 0:
            col = _put(out, j, col, param)
            i = j - n_hot
            r = np.int64(0)
            for bit in range(32):  # Integer.reverse
                if (i >> bit) & 1:
                    r |= np.int64(1) << (31 - bit)
            if r >= 2**31:  # as a Java int
                r -= 2**32
            if r != -(2**31):  # Math.abs(Integer.MIN_VALUE) stays negative in Java
                r = abs(r)
            if r < 0:
                out[j, col] = 45  # -
                col += 1
                r = -r
            digits = 1
            while r >= np.int64(10) ** digits:
                digits += 1
            for d in range(digits):
                out[j, col + digits - 1 - d] = 48 + r // np.int64(10) ** d % 10
            col += digits
        hi[j] = col
    return pack(out, lo, hi, n)
