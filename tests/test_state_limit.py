"""``max_state_bytes``: a run whose operator state outgrows the limit stops with an error
naming the operator, its state and its key count, before the machine runs out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.runtime import StateLimitExceeded


def _keys(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"k": rng.permutation(n), "ts": np.arange(n) // 100, "v": np.ones(n)})


def _run(table: pa.Table, limit: int | None, build: str) -> gs.RunStats:
    p = gs.Pipeline("limit", engine="cpu", max_state_bytes=limit)
    s = p.source(gs.from_arrow(table, batch_rows=10_000), event_time="ts",
                 watermark=gs.Watermark.bounded(0), name="e")
    out: gs.Stream
    if build == "window":
        out = s.key_by("k").window(gs.Tumbling("1h"), name="w").agg(n=gs.count())
    elif build == "session":
        out = s.key_by("k").window(gs.Session("1h"), name="w").agg(n=gs.count())
    else:
        other = p.source(gs.from_arrow(table.slice(0, 10), batch_rows=10), event_time="ts",
                         name="o")
        out = s.interval_join(other, on="k", lower=0, upper=3_600_000)
    out.sink(gs.to_callback(lambda rb: None))
    return p.run()


@pytest.mark.parametrize("build", ["window", "session", "interval join"])
def test_state_past_the_limit_stops_the_run_naming_the_operator(build: str) -> None:
    table = _keys(200_000)
    with pytest.raises(StateLimitExceeded, match=r"over max_state_bytes=1,000,000") as err:
        _run(table, 1_000_000, build)
    text = str(err.value)
    assert ("window 'w'" in text) if build != "interval join" else ("interval_join" in text)
    assert "Raise max_state_bytes" in text
    if build == "window":
        assert "open (key, window) states" in text
    # the same run within a limit it fits in goes through
    assert _run(table.slice(0, 20_000), 10**9, build).events_in >= 20_000
