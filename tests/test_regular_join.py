"""Regular (unwindowed) stream-stream joins, ``Stream.join``, against pandas.

The reference is an independent pandas computation: a merge on the keys (null keys
dropped first: SQL's nulls match nothing), padded rows for an outer side's rows without
a partner, and with a retention ``R`` the rule of :mod:`gpustream.operators.regular_join`
computed from the inputs themselves: each row's watermark as of its arrival is the
largest event time before it in its stream minus the delay; a row with ``ts + R <= w``
is late; two on-time rows join when ``max(w_l, w_r) < min(ts_l, ts_r) + R``.

The join's output is compared as the multiset :func:`gpustream.materialize` gives, by
the rows' ids (every input row has a unique ``id``), and every output row's columns are
checked against the input rows it names; the raw changelog is checked to be
self-consistent (each ``-D`` removes a row present).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import Backend
from gpustream.errors import PlanError
from gpustream.ingest.source import Source, SourceBatch
from gpustream.spec import SpecError, pipeline_from_spec
from gpustream.watermark import NO_WATERMARK
from tests.conftest import cudasim_on
from tests.test_checkpoints import _Crash
from tests.test_join_checkpoints import _checkpoint_marks

HOWS = ["inner", "left", "right", "full"]
Pair = tuple[Any, Any]


def _two(n: int, seed: int, keys: int = 12, span: int = 20_000,
         disorder: int = 300) -> tuple[pa.Table, pa.Table]:
    """Two streams: unique ids, a nullable int key ``k``, a string key ``s`` whose
    dictionaries differ between the streams, a payload, out-of-order times."""
    rng = np.random.default_rng(seed)
    out = []
    for side in (0, 1):
        m = n if side == 0 else n * 3 // 4
        ts = np.sort(rng.integers(0, span, m)) + rng.integers(0, disorder, m)
        cols: dict[str, Any] = {
            "id": np.arange(m, dtype=np.int64) + side * 1_000_000,
            "k": pa.array(rng.integers(0, keys, m), mask=rng.random(m) < 0.05),
            "s": rng.choice(["x", "y"] if side == 0 else ["q", "y", "x", "w"], m),
        }
        if side == 0:
            cols["v"] = np.round(rng.normal(size=m), 3)
        else:
            cols["tag"] = pa.array(rng.choice(["a", "b", "c"], m), mask=rng.random(m) < 0.1)
        cols["ts"] = ts.astype(np.int64)
        out.append(pa.table(cols))
    return out[0], out[1]


def _watermarks(ts: np.ndarray, delay: int) -> np.ndarray:
    """Each row's watermark as of its arrival: the largest earlier time minus ``delay``."""
    w = np.full(len(ts), NO_WATERMARK, dtype=np.int64)
    if len(ts) > 1:
        w[1:] = np.maximum.accumulate(ts)[:-1] - delay
    return w


def _reference(left: pa.Table, right: pa.Table, on: list[str], how: str,
               retention: int | None, delay: int) -> tuple[Counter[Pair], set[int], set[int]]:
    """(Counter of (left id, right id) rows, late left ids, late right ids)."""
    a, b = left.to_pandas(), right.to_pandas()
    late_a: set[int] = set()
    late_b: set[int] = set()
    if retention is not None:
        a["_w"] = _watermarks(a["ts"].to_numpy(), delay)
        b["_w"] = _watermarks(b["ts"].to_numpy(), delay)
        la, lb = a["ts"] + retention <= a["_w"], b["ts"] + retention <= b["_w"]
        late_a, late_b = set(a.loc[la, "id"]), set(b.loc[lb, "id"])
        a, b = a[~la], b[~lb]
    m = a.dropna(subset=on).merge(b.dropna(subset=on), on=on, suffixes=("", "_r"))
    if retention is not None:
        ok = np.maximum(m["_w"], m["_w_r"]) < np.minimum(m["ts"], m["ts_r"]) + retention
        m = m[ok]
    want: Counter[Pair] = Counter(zip(m["id"].tolist(), m["id_r"].tolist(), strict=True))
    if how in ("left", "full"):
        want.update((i, None) for i in sorted(set(a["id"]) - set(m["id"])))
    if how in ("right", "full"):
        want.update((None, i) for i in sorted(set(b["id"]) - set(m["id_r"])))
    return want, late_a, late_b


def _consistent(out: pa.Table) -> None:
    """Every -D (or -U) removes a row emitted before and not removed since."""
    out = _as_log(out)
    held: Counter[tuple[Any, ...]] = Counter()
    cols = [c for c in out.column_names if c != "op"]
    for r in out.to_pylist():
        row = tuple(r[c] for c in cols)
        if r["op"] in ("+I", "+U"):
            held[row] += 1
        else:
            assert held[row] > 0, f"{r['op']} of a row not present: {r}"
            held[row] -= 1


def _pairs(out: pa.Table) -> Counter[Pair]:
    table = gs.materialize(_as_log(out))
    return Counter(zip(table["id"].to_pylist(), table["id_right"].to_pylist(), strict=True))


def _check_columns(out: pa.Table, left: pa.Table, right: pa.Table, on: list[str]) -> None:
    """Each output row holds the columns of the rows its ids name (nulls where padded;
    a right-only row's key in a key column folded into the left's)."""
    got = out.to_pandas()
    a = left.to_pandas().add_prefix("want_l_")
    b = right.to_pandas().add_prefix("want_r_")
    m = got.merge(a, left_on="id", right_on="want_l_id", how="left")
    m = m.merge(b, left_on="id_right", right_on="want_r_id", how="left")
    assert len(m) == len(got)
    has_l, has_r = m["id"].notna(), m["id_right"].notna()
    for c in left.column_names:
        same = _same(m[c], m[f"want_l_{c}"])
        assert bool(same[has_l].all()), c
        if c in on:  # a right-only row's key is the right row's
            assert bool(_same(m[c], m[f"want_r_{c}"])[~has_l].all()), c
        else:
            assert bool(m.loc[~has_l, c].isna().all()), c
    for c in right.column_names:
        if c in on:
            continue
        o = f"{c}_right" if c in left.column_names else c
        assert bool(_same(m[o], m[f"want_r_{c}"])[has_r].all()), c
        assert bool(m.loc[~has_r, o].isna().all()), c


def _same(x: pd.Series, y: pd.Series) -> pd.Series:
    return (x.isna() & y.isna()) | (x == y).fillna(False).astype(bool)


class _Cuts(Source):
    """A table's rows cut into batches of the given sizes (offset: batches done)."""

    def __init__(self, table: pa.Table, sizes: list[int], name: str) -> None:
        self.table, self.name = table, name
        ends = np.minimum(np.cumsum(sizes), table.num_rows).tolist()
        starts = [0, *ends[:-1]]
        self.cuts = [(s, e) for s, e in zip(starts, ends, strict=True) if e > s]
        if not self.cuts or self.cuts[-1][1] < table.num_rows:
            self.cuts.append((self.cuts[-1][1] if self.cuts else 0, table.num_rows))

    def schema(self) -> pa.Schema:
        return self.table.schema

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        for i in range(offset or 0, len(self.cuts)):
            s, e = self.cuts[i]
            yield SourceBatch(self.table.slice(s, e - s).combine_chunks().to_batches()[0],
                              i + 1)


def _run(left: pa.Table, right: pa.Table, how: str, engine: str = "cpu",
         on: Any = "k", retention: int | None = None, delay: int = 200,
         lsrc: Source | None = None, rsrc: Source | None = None,
         batch_rows: int = 64) -> tuple[pa.Table, pa.Table, pa.Table]:
    p = gs.Pipeline(engine=engine)
    wm = gs.Watermark.bounded(delay)
    a = p.source(lsrc or gs.from_arrow(left, batch_rows=batch_rows), event_time="ts",
                 watermark=wm, name="l")
    b = p.source(rsrc or gs.from_arrow(right, batch_rows=batch_rows), event_time="ts",
                 watermark=wm, name="r")
    j = a.join(b, on=on, how=how, retention=retention)
    streams = (j, j.late, j.late_right)
    outs: list[list[pa.RecordBatch]] = [[], [], []]
    for stream, out in zip(streams, outs, strict=True):
        stream.sink(gs.to_callback(out.append))
    p.run()
    got = [pa.Table.from_batches(o, schema=s.schema) for o, s in zip(outs, streams, strict=True)]
    if how == "inner":  # append-only, without an op column: all inserts
        assert "op" not in got[0].column_names
    return _as_log(got[0]), got[1], got[2]


def _as_log(out: pa.Table) -> pa.Table:
    """An inner join's rows (no op column: all inserts) as a changelog, to check like the
    outer joins' (other rows as they are)."""
    if "op" in out.column_names:
        return out
    return out.append_column("op", pa.array(["+I"] * out.num_rows, pa.string()))


@pytest.mark.parametrize("how", HOWS)
def test_join_matches_pandas(backend: Backend, how: str) -> None:
    small = cudasim_on()
    left, right = _two(60 if small else 1500, seed=1, keys=6 if small else 40)
    out, late, late_r = _run(left, right, how, backend.name, batch_rows=16 if small else 97)
    want, _, _ = _reference(left, right, ["k"], how, None, 200)
    assert out.column_names == ["id", "k", "s", "v", "ts", "id_right", "s_right", "tag",
                                "ts_right", "op"]
    assert sum(want.values()) > (30 if small else 1000)
    assert _pairs(out) == want
    _consistent(out)
    _check_columns(gs.materialize(out), left, right, ["k"])
    assert late.num_rows == late_r.num_rows == 0  # without retention nothing is late
    ops = Counter(out["op"].to_pylist())
    if how == "inner":
        assert set(ops) == {"+I"}  # append-only
    else:  # padded rows come and go (as the inputs interleave); the rest stays
        assert ops["+I"] - ops["-D"] == sum(want.values())


@pytest.mark.parametrize("how", ["inner", "full"])
def test_string_and_several_key_columns(backend: Backend, how: str) -> None:
    small = cudasim_on()
    left, right = _two(50 if small else 800, seed=2, keys=4)
    out, _, _ = _run(left, right, how, backend.name, on=["k", "s"],
                     batch_rows=16 if small else 50)
    want, _, _ = _reference(left, right, ["k", "s"], how, None, 200)
    assert out.column_names == ["id", "k", "s", "v", "ts", "id_right", "tag", "ts_right",
                                "op"]
    assert _pairs(out) == want
    _consistent(out)
    table = gs.materialize(out)
    _check_columns(table, left, right, ["k", "s"])
    if how == "full":  # right-only rows carry their own strings ('q', 'w' only on the right)
        assert {"q", "w"} <= set(table.filter(pa.compute.is_null(table["id"]))["s"].to_pylist())


def _operator(left: pa.Table, right: pa.Table, how: str, retention: int | None,
              backend: Backend) -> Any:
    from gpustream.operators.join import JoinSpec
    from gpustream.operators.regular_join import RegularJoinOp

    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow(left), event_time="ts", name="l")
    b = p.source(gs.from_arrow(right), event_time="ts", name="r")
    schema = a.join(b, on="k", how=how).schema
    spec = JoinSpec(("k",), ("k",), "ts", "ts", (("id", "id_right"), ("s", "s_right"),
                                                  ("tag", "tag"), ("ts", "ts_right")),
                    schema, (False,))
    return RegularJoinOp(spec, how, retention, backend)


def _batch(t: pa.Table, backend: Backend, dictionaries: dict[str, Any]) -> Any:
    """A batch of ``t`` as a source sends it: strings in the stream's dictionaries."""
    from gpustream.batch import Batch

    return Batch.from_arrow(t, dictionaries).to_device(backend)


@pytest.mark.parametrize("how", HOWS)
def test_padded_rows_are_retracted_when_their_first_partner_arrives(backend: Backend,
                                                                     how: str) -> None:
    """Driven directly, the inputs taking turns batch by batch (a pipeline's sources
    interleave as their threads run): rows wait for partners on both sides."""
    small = cudasim_on()
    left, right = _two(60 if small else 600, seed=11, keys=10 if small else 40)
    op = _operator(left, right, how, None, backend)
    out = []
    dicts: list[dict[str, Any]] = [{}, {}]
    turns = 6 if small else 12
    lcut = np.linspace(0, left.num_rows, turns + 1).astype(int)
    rcut = np.linspace(0, right.num_rows, turns + 1).astype(int)
    for i in range(turns):
        turn = [(0, left.slice(lcut[i], lcut[i + 1] - lcut[i])),
                (1, right.slice(rcut[i], rcut[i + 1] - rcut[i]))]
        for port, t in turn if i % 2 else turn[::-1]:
            if t.num_rows:
                out += [o.to_arrow() for o in op.process_port(port, _batch(t, backend,
                                                                             dicts[port]))]
    log = _as_log(pa.Table.from_batches(out))
    ops = Counter(log["op"].to_pylist())
    assert set(ops) == ({"+I"} if how == "inner" else {"+I", "-D"})
    _consistent(log)
    assert _pairs(log) == _reference(left, right, ["k"], how, None, 0)[0]
    _check_columns(gs.materialize(log), left, right, ["k"])


# (the simulator is slow: test_join_matches_pandas runs every how on it)
@pytest.mark.parametrize("how", ["left", "full"] if cudasim_on() else HOWS)
def test_retention_follows_its_rule(backend: Backend, how: str) -> None:
    small = cudasim_on()
    left, right = _two(100 if small else 2000, seed=3, keys=5, span=2_000 if small else 60_000,
                       disorder=400)
    out, late, late_r = _run(left, right, how, backend.name, retention=200, delay=100,
                             batch_rows=16 if small else 64)
    want, late_a, late_b = _reference(left, right, ["k"], how, 200, 100)
    assert late_a and late_b  # some rows of each input are late ...
    assert set(late["id"].to_pylist()) == late_a  # ... and go to .late unchanged
    assert set(late_r["id"].to_pylist()) == late_b
    assert late.column_names == left.column_names
    assert _pairs(out) == want
    _consistent(out)
    # the rule is not "pairs within the retention" (rows out of order join less)
    inner = {p for p in want if None not in p}
    assert inner != _closer_than(left, right, 200)


def _closer_than(left: pa.Table, right: pa.Table, span: int) -> set[Pair]:
    a, b = left.to_pandas(), right.to_pandas()
    near = a.dropna(subset=["k"]).merge(b.dropna(subset=["k"]), on="k")
    near = near[(near.ts_x - near.ts_y).abs() < span]
    return set(zip(near.id_x, near.id_y, strict=True))


def test_in_order_inputs_join_every_pair_closer_than_retention_plus_delay() -> None:
    left, right = _two(1500, seed=10, keys=5, span=60_000, disorder=1)  # in order
    out, late, late_r = _run(left, right, "inner", retention=200, delay=100)
    assert late.num_rows == late_r.num_rows == 0
    got = set(_pairs(out))
    assert got == set(_reference(left, right, ["k"], "inner", 200, 100)[0])
    close = _closer_than(left, right, 200 + 100)
    assert close <= got and len(close) > 100


def test_state_is_bounded_by_the_retention() -> None:
    """Driven directly: after each watermark the join holds only rows whose time +
    retention is above it; an outer row that leaves unmatched keeps its padded row."""
    from gpustream.backend import select_backend

    left, right = _two(3000, seed=4, span=300_000, disorder=100)
    cpu = select_backend("cpu")
    op = _operator(left, right, "left", 1000, cpu)
    most = 0
    out = []
    dicts: list[dict[str, Any]] = [{}, {}]
    for i in range(0, 3000, 100):
        for port, t in ((0, left.slice(i, 100)), (1, right.slice(i * 3 // 4, 75))):
            if t.num_rows:
                out += op.process_port(port, _batch(t, cpu, dicts[port]))
        w = int(min(left["ts"][min(i + 99, 2999)].as_py(),
                    right["ts"][min(i * 3 // 4 + 74, 2249)].as_py())) - 100
        op.input_watermark(0, w)
        op.input_watermark(1, w)
        for side in (0, 1):
            held = op.state[side]
            assert held is None or bool((held.ts + 1000 > op.current).all())
        most = max(most, op.buffered)
    assert most < 200  # ~ rows of 1 s of both inputs (about 10 per second each)
    log = pa.Table.from_batches([o.to_arrow() for o in out])
    _consistent(log)
    assert gs.materialize(log).num_rows >= left.num_rows  # every left row, padded or not


@settings(max_examples=25, deadline=None)
@given(how=st.sampled_from(HOWS), retention=st.sampled_from([None, 300, 2000]),
       lcuts=st.lists(st.integers(1, 40), min_size=1, max_size=12),
       rcuts=st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_results_do_not_depend_on_batching(how: str, retention: int | None,
                                           lcuts: list[int], rcuts: list[int]) -> None:
    left, right = _two(120, seed=5, keys=5, span=3_000, disorder=300)
    out, late, late_r = _run(left, right, how, retention=retention, delay=100,
                             lsrc=_Cuts(left, lcuts, "l"), rsrc=_Cuts(right, rcuts, "r"))
    want, late_a, late_b = _reference(left, right, ["k"], how, retention, 100)
    assert _pairs(out) == want
    _consistent(out)
    assert set(late["id"].to_pylist()) == late_a
    assert set(late_r["id"].to_pylist()) == late_b


# -- checkpoints ------------------------------------------------------------------------

def _build(left: pa.Table, right: pa.Table, how: str, retention: int | None,
           batch_rows: int) -> Any:
    def build(engine: str, crash: dict[str, int]) -> tuple[gs.Pipeline, list[pa.RecordBatch],
                                                          int]:
        p = gs.Pipeline("regular-join-ck", engine=engine)
        wm = gs.Watermark.bounded(150)
        srcs: dict[str, Source] = {}
        for name, table in (("left", left), ("right", right)):
            src: Source = gs.from_arrow(table, batch_rows=batch_rows)
            srcs[name] = _Crash(src, crash[name]) if name in crash else src
        a = p.source(srcs["left"], event_time="ts", watermark=wm, name="left")
        b = p.source(srcs["right"], event_time="ts", watermark=wm, name="right")
        out: list[pa.RecordBatch] = []
        a.join(b, on=["k", "s"], how=how, retention=retention,
               name="j").sink(gs.to_callback(out.append))
        return p, out, left.num_rows + right.num_rows
    return build


def _resumed(build: Any, crash: dict[str, int], folder: Path, every: int,
             engines: tuple[str, str], resumes: bool = True) -> pa.Table:
    """The changelog of a run that crashed (up to its last checkpoint) and of its
    restart from that checkpoint, together (``resumes``: it had a checkpoint)."""
    ck = gs.Checkpointing(folder, every_batches=every)
    first, out1, total = build(engines[0], crash)
    with _checkpoint_marks(out1) as marks, pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2, _ = build(engines[1], {})
    stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint == (len(marks) or None)
    if resumes:  # it resumed, and did not start over
        assert stats.restored_checkpoint is not None and stats.events_in < total
    # (a crash before the join emitted anything leaves no rows before the checkpoint)
    before = pa.Table.from_batches(out1).slice(0, marks[-1]) if marks and out1 else None
    after = pa.Table.from_batches(out2)
    return after if before is None else pa.concat_tables([before, after])


@pytest.mark.parametrize("how,retention", [("full", None), ("left", 500), ("inner", 500)])
def test_a_crashed_join_resumes_from_its_checkpoint(backend: Backend, how: str,
                                                    retention: int | None,
                                                    tmp_path: Path) -> None:
    small = cudasim_on()
    left, right = _two(100 if small else 1200, seed=6, keys=4,
                       span=3_000 if small else 30_000)
    build = _build(left, right, how, retention, 20 if small else 64)
    log = _resumed(build, {"left": 3 if small else 9}, tmp_path / "ck", 2, (backend.name,) * 2)
    _consistent(log)
    want, _, _ = _reference(left, right, ["k", "s"], how, retention, 150)
    assert _pairs(log) == want


@pytest.mark.parametrize("direction", ["from cpu", "to cpu"])
def test_a_checkpoint_restores_on_another_backend(device_backend: Backend, direction: str,
                                                  tmp_path: Path) -> None:
    left, right = _two(100, seed=7, keys=4, span=3_000)
    engines = ("cpu", device_backend.name)
    build = _build(left, right, "full", 800, 20)
    log = _resumed(build, {"right": 3}, tmp_path / "ck", 2,
                   engines if direction == "from cpu" else engines[::-1])
    _consistent(log)
    assert _pairs(log) == _reference(left, right, ["k", "s"], "full", 800, 150)[0]


@settings(max_examples=8, deadline=None)
@given(crash_after=st.integers(1, 11), every=st.integers(1, 4), right=st.booleans())
def test_where_the_checkpoint_falls_does_not_change_results(crash_after: int, every: int,
                                                            right: bool) -> None:
    left, right_t = _two(600, seed=8, keys=4, span=8_000)
    build = _build(left, right_t, "full", 700, 40)
    with tempfile.TemporaryDirectory() as folder:
        log = _resumed(build, {"right" if right else "left": crash_after}, Path(folder),
                       every, ("cpu", "cpu"), resumes=False)
    _consistent(log)
    assert _pairs(log) == _reference(left, right_t, ["k", "s"], "full", 700, 150)[0]


# -- YAML and plan errors ---------------------------------------------------------------

def test_a_join_step_in_a_spec_matches_the_python_api(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    left, right = _two(500, seed=9, keys=8)
    pq.write_table(left, tmp_path / "l.parquet")
    pq.write_table(right, tmp_path / "r.parquet")
    spec = tmp_path / "j.yaml"
    spec.write_text("""\
engine: cpu
source: {type: parquet, path: l.parquet, event_time: ts, watermark: 150ms}
steps:
  - join:
      other: {type: parquet, path: r.parquet, event_time: ts, watermark: 150ms, name: r}
      on: k
      how: right
      retention: 2s
  - filter: "id_right >= 0"
sink: {type: parquet, path: out/j.parquet}
""")
    pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out" / "j.parquet")
    assert got.column_names[-1] == "op"
    want, _, _ = _reference(left, right, ["k"], "right", 2000, 150)
    assert _pairs(got) == Counter({p: c for p, c in want.items() if p[1] is not None})
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("how: right", "how: outer"))
    with pytest.raises(SpecError, match="how"):
        pipeline_from_spec(bad)


def _streams() -> tuple[gs.Pipeline, gs.Stream, gs.Stream]:
    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow({"k": [1], "ts": [1], "v": [2]}), event_time="ts", name="a")
    b = p.source(gs.from_arrow({"k": [1], "ts": [1]}), event_time="ts", name="b")
    return p, a, b


def test_steps_that_need_append_only_rows_refuse_a_changelog() -> None:
    _, a, b = _streams()
    j = a.join(b, on="k", how="left")
    with pytest.raises(PlanError, match=r"step 3 \(window 'w'\): its input is a changelog "
                                        r"\(op column\) from step 1 \(join how='left'\); "
                                        "windows need an append-only stream: use "
                                        "how='inner' or an interval_join"):
        j.filter(gs.col("v") > 0).window(gs.Tumbling(10), name="w").agg(n=gs.count())
    _, a, b = _streams()
    j = a.join(b, on="k", how="full")
    with pytest.raises(PlanError, match="interval joins need an append-only stream"):
        j.interval_join(b, on="k", lower=0, upper=5)
    with pytest.raises(PlanError, match="top_k"):
        j.with_columns(w=gs.col("v") * 2).top_k(3, by="v")
    with pytest.raises(PlanError, match=r"step 2 \(select\): drops the op column"):
        j.select("k", "v")
    j.select("k", "op")  # keeping op is fine
    _, a, b = _streams()  # an inner join is append-only, but no column holds its time
    with pytest.raises(PlanError, match="in neither input's column"):
        a.join(b, on="k").window(gs.Tumbling(10)).agg(n=gs.count())


def test_bad_arguments_name_the_step_and_the_fix() -> None:
    _, a, b = _streams()
    with pytest.raises(PlanError, match=r"step 1 \(join how='outer'\): how='outer' is not"):
        a.join(b, on="k", how="outer")
    with pytest.raises(PlanError, match="retention must be >= 0"):
        a.join(b, on="k", retention=-5)
    with pytest.raises(PlanError, match="the right side has no column 'x'"):
        a.join(b, on=("k", "x"))
    p = gs.Pipeline(engine="cpu")
    c = p.source(gs.from_arrow({"k": [1], "ts": [1], "op": ["x"]}), event_time="ts")
    d = p.source(gs.from_arrow({"k": [1], "ts": [1]}), event_time="ts")
    with pytest.raises(PlanError, match="column 'op', which the join adds"):
        c.join(d, on="k", how="left")
    assert c.join(d, on="k").schema.names[-1] == "ts_right"  # inner: no op added


def test_a_join_without_event_time_still_refuses_revised_window_rows() -> None:
    """Inputs without event time join (no retention reads none), but a window with
    allowed lateness before the join is refused: its revisions would join twice."""
    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow({"k": [1, 1], "ts": [1, 5]}), event_time="ts", name="a")
    b = p.source(gs.from_arrow({"k": [1]}), name="b")  # no event time
    w = a.key_by("k").window(gs.Tumbling(10), allowed_lateness=100).agg(n=gs.count())
    with pytest.raises(gs.PlanError, match="allowed_lateness"):
        w.join(b, on="k")
    plain = a.join(b, on="k")
    assert plain.collect().to_pydict() == {"k": [1, 1], "ts": [1, 5]}
    with pytest.raises(gs.PlanError, match="drop retention="):
        a.join(b, on="k", retention="1s")
