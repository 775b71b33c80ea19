"""The Nexmark generator's bid kernel: one njit pass over a range of event numbers.

Pure arithmetic over arrays (no I/O): :mod:`gpustream.ingest.nexmark` calls it. Every
random number depends only on (seed, event number, draw), through splitmix64, so the
output never depends on how the range is cut.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["M1", "bids"]

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
    z = seed + np.uint64(event * 8 + draw + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _pick(u, n):  # type: ignore[no-untyped-def]
    return min(np.int64(u * n), n - 1)


@numba.njit(nogil=True, cache=False)
def bids(first, last, seed, total, pp, ap, in_flight, active, hot_a, hot_b, delay_us, base,  # type: ignore[no-untyped-def]
          auction, bidder, price, channel, ts):
    n = 0
    for e in range(first, last):
        epoch, off = divmod(e, total)
        if off < pp + ap:
            continue
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
        auction[n] = a + FIRST_ID
        bidder[n] = b + FIRST_ID
        price[n] = np.int64(np.rint(10.0 ** (_uniform(seed, e, 4) * 6.0) * 100.0))
        ch = _pick(_uniform(seed, e, 5), 2 * NUM_CHANNELS)
        channel[n] = ch % 4 if ch < NUM_CHANNELS else 4 + ch % NUM_CHANNELS
        ts[n] = base + np.int64(e * delay_us) // 1000
        n += 1
    return n


