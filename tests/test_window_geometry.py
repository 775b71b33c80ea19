"""Window assigners own their geometry (size, slide, offset, gap in event-time units):
the plan checks it, the planner hands it to the window and window-join operators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.backend import Backend
from gpustream.durations import format_millis
from gpustream.errors import PlanError
from gpustream.plan.physical import window_spec
from gpustream.windows import WindowAssigner, WindowGeometry, to_event_units

UNITS = [(pa.int64(), 1), (pa.timestamp("s"), 1 / 1000), (pa.timestamp("ms"), 1),
         (pa.timestamp("us"), 1000), (pa.timestamp("ns"), 1_000_000)]


@pytest.mark.parametrize(("ts_type", "per_ms"), UNITS, ids=lambda u: str(u))
@pytest.mark.parametrize(("assigner", "ms"), [
    (gs.Tumbling("10s"), (10_000, 10_000, 0, 0)),
    (gs.Tumbling("10s", offset="3s"), (10_000, 10_000, 3_000, 0)),
    (gs.Tumbling("10s", offset="-3s"), (10_000, 10_000, 7_000, 0)),
    (gs.Sliding("9s", "3s"), (9_000, 3_000, 0, 0)),
    (gs.Sliding("9s", "3s", offset="-1s"), (9_000, 3_000, 2_000, 0)),
    (gs.Sliding("9s", "3s", offset="8s"), (9_000, 3_000, 2_000, 0)),
    (gs.Session("30s"), (0, 0, 0, 30_000)),
    (gs.ProcessingTime.sliding("9s", "3s", offset="-1s"), (9_000, 3_000, 2_000, 0)),
], ids=["tumbling", "offset", "negative-offset", "sliding", "sliding-offset",
        "sliding-big-offset", "session", "processing-time"])
def test_geometry_in_event_time_units(assigner: WindowAssigner, ms: tuple[int, ...],
                                      ts_type: pa.DataType, per_ms: float) -> None:
    want = WindowGeometry(*(int(x * per_ms) for x in ms))
    assert assigner.geometry(ts_type, "here") == want
    assert 0 <= want.offset < max(want.slide, 1)


@pytest.mark.parametrize(("assigner", "part"), [
    (gs.Tumbling("1500ms"), "window size"),
    (gs.Sliding("9s", "1500ms"), "window slide"),
    (gs.Tumbling("10s", offset="500ms"), "window offset"),
    (gs.Session("2500ms"), "session gap"),
])
def test_a_part_not_in_whole_units_is_named(assigner: WindowAssigner, part: str) -> None:
    with pytest.raises(PlanError, match=rf"^step 2 \(window 'w'\) {part}: \d+ ms is not a "
                                        r"whole number of s, the unit of the event-time column$"):
        assigner.geometry(pa.timestamp("s"), "step 2 (window 'w')")
    # and the plan says so when the window is built over seconds
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(pa.table({"k": [1], "ts": pa.array([1], pa.timestamp("s"))})),
                 event_time="ts")
    with pytest.raises(PlanError, match=rf"step 1 \(window 'w'\) {part}: "):
        s.key_by("k").window(assigner, name="w").agg(n=gs.count())


def test_to_event_units_stays_importable_from_the_plan() -> None:
    from gpustream import plan

    assert plan.to_event_units is to_event_units
    assert to_event_units(3, pa.timestamp("ns"), "x") == 3_000_000


@pytest.mark.parametrize("assigner", [gs.Tumbling(4_000, offset=-1_500), gs.Sliding(6_000, 2_000),
                                      gs.Session(700)], ids=["tumbling", "sliding", "session"])
def test_the_planner_hands_the_geometry_to_the_window(assigner: WindowAssigner) -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1], "ts": pa.array([1], pa.timestamp("us")), "v": [1.0]}),
                 event_time="ts")
    w = s.key_by("k").window(assigner, name="w").agg(n=gs.count())
    node = w._node
    spec = window_spec(node, s._schema, w._schema)  # type: ignore[arg-type]
    g = assigner.geometry(pa.timestamp("us"), "x")
    assert (spec.size, spec.slide, spec.offset, spec.gap) == (g.size, g.slide, g.offset, g.gap)


@dataclass(frozen=True)
class _EveryOther(WindowAssigner):
    """An assigner from outside gpustream.windows: windows of two slides every slide."""

    slide_ms: int

    def describe(self) -> str:
        return f"every-other({format_millis(self.slide_ms)})"

    def geometry(self, ts_type: pa.DataType, where: str) -> WindowGeometry:
        slide = to_event_units(self.slide_ms, ts_type, f"{where} window slide")
        return WindowGeometry(2 * slide, slide, 0, 0)


def _events(n: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table({"k": rng.integers(0, 5, n), "ts": np.sort(rng.integers(0, 40_000, n)),
                     "v": rng.normal(size=n)})


def _run(table: pa.Table, assigner: WindowAssigner, engine: str) -> list[dict[str, object]]:
    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=64), event_time="ts",
                 watermark=gs.Watermark.bounded(0))
    out = s.key_by("k").window(assigner, name="w").agg(n=gs.count(), hi=gs.col("v").max())
    return sorted(out.collect().to_pylist(),
                  key=lambda r: (r["window_end"], r["window_start"], r["k"]))


def test_an_assigner_that_owns_its_geometry_needs_no_ladder(backend: Backend) -> None:
    """Nothing in the plan or the planner names the assigner classes: one they have never
    seen runs as the built-in window of the same geometry."""
    table = _events(300 if backend.name == "cudasim" else 3_000)
    got = _run(table, _EveryOther(2_000), backend.name)
    assert got and got == _run(table, gs.Sliding(4_000, 2_000), backend.name)


def test_equivalent_offsets_give_equal_windows(backend: Backend) -> None:
    table = _events(300 if backend.name == "cudasim" else 3_000)
    got = _run(table, gs.Tumbling(4_000, offset=-1_500), backend.name)
    assert got and got == _run(table, gs.Tumbling(4_000, offset=2_500), backend.name)
    assert {r["window_start"] % 4_000 for r in got} == {2_500}  # type: ignore[operator]


def test_window_joins_take_the_geometry_too() -> None:
    def pairs(assigner: WindowAssigner) -> list[tuple[object, ...]]:
        p = gs.Pipeline(engine="cpu")
        a = p.source(gs.from_arrow({"k": [1, 1, 2, 1], "ts": [100, 2_600, 2_400, 5_100]}),
                     event_time="ts", name="a")
        b = p.source(gs.from_arrow({"k": [1, 2, 1], "ts": [2_400, 2_600, 4_900]}),
                     event_time="ts", name="b")
        t = a.window_join(b, on="k", window=assigner).collect()
        return sorted(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))

    got = pairs(gs.Tumbling(2_000, offset=-1_500))
    assert got == pairs(gs.Tumbling(2_000, offset=500))
    # windows [-1500, 500), [500, 2500), [2500, 4500), [4500, 6500): only k=1's 5100 (a)
    # and 4900 (b) share one; k=2's 2400 (a) and 2600 (b) fall on either side of 2500
    assert got == [(1, 5_100, 4_900, 4_500, 6_500)]
