"""The Nexmark generator's kernels: one njit pass per kind over a range of events.

Pure arithmetic over arrays (no I/O): :mod:`gpustream.ingest.nexmark` calls them. Every
random number depends only on (seed, event number, draw), through splitmix64, so the
output never depends on how the range is cut. Strings come out as fixed-width ASCII
matrices that become Arrow string arrays without a copy per row.
"""

from __future__ import annotations

import numba
import numpy as np

from gpustream.kernels.cache import CACHE

__all__ = ["M1", "auctions", "bids", "persons"]

FIRST_ID = 1000
ID_LEAD = 10
HOT_BLOCK = 100
NUM_CHANNELS = 10_000
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _uniform(seed, event, draw):  # type: ignore[no-untyped-def]
    """A uniform in [0, 1) that depends only on (seed, event, draw): splitmix64."""
    z = seed + np.uint64(event * 64 + draw + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _pick(u, n):  # type: ignore[no-untyped-def]
    return min(np.int64(u * n), n - 1)


@numba.njit(inline="always")
def _bids_before(x, total, pp, ap):  # type: ignore[no-untyped-def]
    """How many of the events 0..x-1 are bids."""
    epoch, off = divmod(x, total)
    return epoch * (total - pp - ap) + max(off - pp - ap, 0)


@numba.njit(nogil=True, cache=CACHE, parallel=True)
def bids(first, last, seed, total, pp, ap, in_flight, active, hot_a, hot_b, delay_us, base,  # type: ignore[no-untyped-def]
         auction, bidder, price, channel, ts):
    """Bids among events ``first..last``, in event order; returns how many.

    Each bid's output row is known from its event number, so both cores fill rows.
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


@numba.njit(inline="always")
def _letters(seed, e, draw0, out, row, col0, width):  # type: ignore[no-untyped-def]
    for k in range(width):
        out[row, col0 + k] = 97 + _pick(_uniform(seed, e, draw0 + k), 26)


@numba.njit(nogil=True, cache=CACHE)
def persons(first, last, seed, total, pp, n_first, n_last, n_city, n_state, delay_us, base,  # type: ignore[no-untyped-def]
            ids, first_name, last_name, city, state, email, card, ts):
    """People among events ``first..last``: ids, name/city/state indices, email, card."""
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
            _letters(seed, e, 4, email, n, 0, 7)  # 7 letters @ 5 letters .com
            email[n, 7] = 64
            _letters(seed, e, 11, email, n, 8, 5)
            email[n, 13] = 46
            email[n, 14] = 99
            email[n, 15] = 111
            email[n, 16] = 109
            for k in range(16):  # dddd dddd dddd dddd
                card[n, k + k // 4] = 48 + _pick(_uniform(seed, e, 16 + k), 10)
            card[n, 4] = 32
            card[n, 9] = 32
            card[n, 14] = 32
            ts[n] = base + np.int64(e * delay_us) // 1000
            n += 1
    return n


@numba.njit(nogil=True, cache=CACHE)
def auctions(first, last, seed, total, pp, ap, active, hot_s, ahead, delay_us, base,  # type: ignore[no-untyped-def]
             ids, name, desc, initial, reserve, ts, expires, seller, category):
    """Auctions among events ``first..last``; ``ahead``: events until 100 more auctions."""
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
            _letters(seed, e, 6, name, n, 0, 20)
            _letters(seed, e, 26, desc, n, 0, 10)  # 10 letters + " auction"
            for k in range(8):
                desc[n, 10 + k] = (32, 97, 117, 99, 116, 105, 111, 110)[k]
            n += 1
    return n
