"""YAML specs, the CLI's run/validate/explain/generate, sinks and the live view's log lines
(the metrics and the live view themselves: tests/test_metrics.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.spec import SpecError, pipeline_from_spec

GOOD = """\
name: hot
engine: cpu
source:
  type: nexmark
  stream: bids
  events: 5000
  event_time: date_time
  watermark: 2s
steps:
  - filter: "price > 100 and channel != 'apple'"
  - with_columns: {usd: "price * 0.908"}
  - key_by: auction
  - window: {sliding: 10s, slide: 2s, name: hot}
  - agg:
      bids: count()
      volume: sum(usd)
      top: max(usd)
sink: {type: parquet, path: out/hot}
late: {type: jsonl, path: out/late.jsonl}
"""


def _spec(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _cli(*args: str, cwd: Path | None = None, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    return subprocess.run([sys.executable, "-m", "gpustream.cli", *args], capture_output=True,
                          text=True, env=env, timeout=180, cwd=cwd, input=stdin)


def test_a_spec_runs_like_the_python_api(tmp_path: Path) -> None:
    spec = _spec(tmp_path, GOOD)
    stats = pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out" / "hot").sort_by(
        [("window_end", "ascending"), ("auction", "ascending")])
    p = gs.Pipeline("hot", engine="cpu")
    bids = p.source(gs.nexmark(events=5000).bids, event_time="date_time",
                    watermark=gs.Watermark.bounded("2s"))
    want = (bids.filter((gs.col("price") > 100) & (gs.col("channel") != "apple"))
            .with_columns(usd=gs.col("price") * 0.908).key_by("auction")
            .window(gs.Sliding("10s", "2s"), name="hot")
            .agg(bids=gs.count(), volume=gs.col("usd").sum(), top=gs.col("usd").max())
            .collect().sort_by([("window_end", "ascending"), ("auction", "ascending")]))
    assert got.equals(want)
    assert stats.events_in == 4600


BROKEN = [
    ("name: x\nsource: {type: parquet, pathh: a.parquet}\nsink: {type: console}\n",
     r"p.yaml:2: source.pathh: unknown field; did you mean 'path'\?"),
    ("source:\n  type: parket\n  path: a\nsink: {type: console}\n",
     r"p.yaml:2: source.type: 'parket' is not one of 'parquet', 'csv'"),
    ("source: {type: nexmark, events: 10, event_time: date_time}\nsteps:\n  - key_by: auction\n"
     "  - window: {tumbling: 10s}\n  - agg:\n      x: avgg(price)\nsink: {type: console}\n",
     r"p.yaml:6: steps\[2\].agg.x: unknown aggregation 'avgg'; did you mean 'avg'\?"),
    ("source: {type: nexmark, events: 10}\nsteps:\n  - filter: \"prise > 3\"\n"
     "sink: {type: console}\n",
     r"p.yaml:3: steps\[0\].filter: .*'prise'.*did you mean 'price'"),
    ("source: {type: nexmark, events: 10}\nsteps:\n  - fliter: \"price > 3\"\n"
     "sink: {type: console}\n",
     r"p.yaml:3: steps\[0\]: unknown step 'fliter'; did you mean 'filter'\?"),
    ("source: {type: nexmark, events: 10}\nsteps:\n  - filter: \"__import__('os').system('x')\"\n"
     "sink: {type: console}\n",
     r"p.yaml:3: steps\[0\].filter: only plain function names can be called"),
    ("source: {type: nexmark, events: 10}\nsteps:\n  - filter: \"open('x') == 1\"\n"
     "sink: {type: console}\n",
     r"p.yaml:3: steps\[0\].filter: unknown function 'open'"),
    ("source: {type: nexmark, events: 10, event_time: date_time}\nsteps:\n  - key_by: auction\n"
     "  - window: {tumbling: 10s, sliding: 5s}\n  - agg: {n: count()}\nsink: {type: console}\n",
     r"p.yaml:4: steps\[1\].window: give exactly one of tumbling, sliding"),
    ("source: {type: nexmark, events: 10, event_time: date_time}\nsteps:\n  - key_by: auction\n"
     "  - window: {sliding: 10s, slide: 3s}\n  - agg: {n: count()}\nsink: {type: console}\n",
     r"p.yaml:4: steps\[1\].window: .*multiple of"),
    ("source: {type: kafka, topic: t}\nsink: {type: console}\n",
     r"p.yaml:1: source.bootstrap: is required for type kafka"),
    ("source: {type: kafka, topic: t, bootstrap: b}\nsink: {type: console}\n",
     r"p.yaml:1: source.schema: is required for type kafka"),
    ("source: {type: nexmark, events: 10}\nsink: 3\n",
     r"p.yaml:2: sink: expected a mapping or a list \(got 3\)"),
    ("source: {type: nexmark, events: 10}\nsink: {type: kafka, topic: t, bootstrap: b, "
     "key: bidr}\n", r"p.yaml:2: sink.key: no column 'bidr' in the stream"),
    ("source: {type: nexmark, events: 10}\n", r"a spec needs a sink"),
    ("source: {type: nexmark, events: 10}\nsink: {type: console}\nlate: {type: console}\n",
     r"p.yaml:3: late: late: needs a window step"),
    ("source: [\n", r"p.yaml:2: not valid YAML"),
    ("engine: tpu\nsource: {type: nexmark}\nsink: {type: console}\n",
     r"p.yaml:1: engine: 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    ("source: {type: nexmark, events: 10}\nsteps:\n  - select: [price, nope]\n"
     "sink: {type: console}\n", r"steps\[0\].select: .*'nope'"),
    ("source: {type: nexmark, events: 10}\ntables:\n  people: {type: nexmark, stream: persons}\n"
     "steps:\n  - join_table: {table: peple, on: [bidder, id]}\nsink: {type: console}\n",
     r"p.yaml:3: tables.people.key: is required"),
    ("source: {type: nexmark, events: 10}\ntables:\n  people: {type: nexmark, stream: persons,"
     " events: 10, key: id}\nsteps:\n  - join_table: {table: peple, on: [bidder, id]}\n"
     "sink: {type: console}\n",
     r"p.yaml:5: steps\[0\].join_table.table: no table 'peple' under tables:; known: people"),
    ("source: {type: nexmark, events: 10}\ntables:\n  people: {type: nexmark, stream: persons,"
     " events: 10, key: id}\nsteps:\n  - join_table: {table: people, on: [bidder, name]}\n"
     "sink: {type: console}\n",
     r"steps\[0\].join_table: .*keyed by \(id\)"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_broken_specs_fail_before_running_with_file_line_field_and_fix(
        tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        pipeline_from_spec(_spec(tmp_path, text))


def test_validate_and_explain_on_the_cli(tmp_path: Path) -> None:
    good = _spec(tmp_path, GOOD)
    ok = _cli("validate", str(good))
    assert ok.returncode == 0 and "ok (pipeline 'hot')" in ok.stdout
    bad = _cli("validate", str(_spec(tmp_path, BROKEN[2][0], "bad.yaml")))
    assert bad.returncode == 2
    assert "bad.yaml:6: steps[2].agg.x: unknown aggregation 'avgg'" in bad.stderr.replace("\n", "")
    missing = _cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read the spec" in missing.stderr
    plan = _cli("explain", str(good), "--engine", "cpu")
    assert plan.returncode == 0
    assert "backend: cpu" in plan.stdout and "window" in plan.stdout


MISSING_INPUT = """\
source: {type: parquet, path: data/bids.parquet, event_time: ts}
steps:
  - key_by: auction
  - window: {tumbling: 10s}
  - agg: {x: avgg(price)}
sink: {type: console}
"""


def _lines_of(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_validate_reports_every_error_without_the_input_files(tmp_path: Path) -> None:
    # the parquet file is not there: an error naming source.path, and the step's own
    # error reported in the same run (the input used to fail first, exit 1)
    out = _cli("validate", str(_spec(tmp_path, MISSING_INPUT)))
    assert out.returncode == 2, out.stderr
    errors = _lines_of(out.stderr)
    assert errors[0].startswith("error: ") and "p.yaml:1: source.path: no file matches" in \
        errors[0] and "bids.parquet" in errors[0]
    assert errors[1] == ("error: " + str(tmp_path / "p.yaml") + ":5: steps[2].agg.x: unknown "
                         "aggregation 'avgg'; did you mean 'avg'? in 'avgg(price)' at column 1")
    assert errors[2].endswith("p.yaml: 2 errors") and len(errors) == 3
    assert "FileNotFoundError" not in out.stderr


def test_validate_checks_against_the_schema_a_text_source_gives(tmp_path: Path) -> None:
    text = """\
        source:
          type: jsonl
          path: later/*.jsonl
          schema: {ts: "timestamp[ms]", k: string, v: float64}
          event_time: ts
        steps:
          - filter: "vv > 3"
          - key_by: k
          - window: {tumbling: 10s}
          - agg: {total: sum(v), odd: avgg(v), n: count()}
        sink: {type: jsonl, path: out/x.jsonl}
        """
    out = _cli("validate", str(_spec(tmp_path, text)))
    assert out.returncode == 2
    lines = _lines_of(out.stderr)
    assert lines[0].startswith("warning: ") and ":3: source.path: no file matches" in lines[0]
    assert "checked against the schema it gives" in lines[0]
    assert ":7: steps[0].filter: " in lines[1] and "unknown column 'vv'" in lines[1]
    assert ":10: steps[3].agg.odd: unknown aggregation 'avgg'" in lines[2]
    assert len(lines) == 4 and lines[3].endswith("2 errors")
    # the same spec, right: ok with the warning, and nothing written
    fixed = text.replace("vv > 3", "v > 3").replace("odd: avgg(v), ", "")
    ok = _cli("validate", str(_spec(tmp_path, fixed, "ok.yaml")))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith("ok (pipeline 'pipeline'), 1 warning")
    assert "warning: " in ok.stderr and not (tmp_path / "out").exists()
    # a column the schema does not have is still an error when the file is missing
    wrong = fixed.replace("sum(v)", "sum(w)")
    bad = _cli("validate", str(_spec(tmp_path, wrong, "wrong.yaml")))
    assert bad.returncode == 2 and ":10: steps[3].agg: " in bad.stderr
    assert "unknown column 'w'" in bad.stderr
    # without a full schema, a missing text input is an error that says how to avoid it
    partial = fixed.replace('schema: {ts: "timestamp[ms]", k: string, v: float64}',
                            'schema_overrides: {ts: "timestamp[ms]"}')
    need = _cli("validate", str(_spec(tmp_path, partial, "partial.yaml")))
    assert need.returncode == 2
    assert ":3: source.path: no file matches" in need.stderr
    assert "give schema: with every column" in need.stderr.replace("\n", "")


def test_run_and_explain_name_a_missing_input_and_exit_2(tmp_path: Path) -> None:
    spec = _spec(tmp_path, MISSING_INPUT.replace("avgg", "avg"))
    for command in ("run", "explain"):
        out = _cli(command, str(spec), "--engine", "cpu")
        assert out.returncode == 2, (command, out.stderr)
        assert "p.yaml:1: source.path: no file matches" in out.stderr, out.stderr
        assert "FileNotFoundError" not in out.stderr
    # a table's and a join's missing inputs name their own fields
    pq.write_table(pa.table({"ts": [1], "user": [1]}), tmp_path / "clicks.parquet")
    spec = _spec(tmp_path, """\
        engine: cpu
        source: {type: parquet, path: clicks.parquet, event_time: ts}
        tables:
          people: {type: csv, path: people.csv, key: id}
        steps:
          - window_join:
              other: {type: parquet, path: views.parquet, event_time: ts}
              on: user
              window: {tumbling: 1s}
        sink: {type: console}
        """, "joins.yaml")
    out = _cli("run", str(spec), "--no-live")
    assert out.returncode == 2
    assert "joins.yaml:4: tables.people.path: no file matches" in out.stderr
    assert "joins.yaml:7: steps[0].window_join.other.path: no file matches" in out.stderr


def test_every_spec_error_in_one_go_without_cascades(tmp_path: Path) -> None:
    text = """\
        source: {type: nexmark, events: 10, event_time: date_time}
        steps:
          - filter: "prise > 3"
          - with_columns: {usd: "price * 0.9", eur: "pryce * 1"}
          - filter: "open(1) > 2"
          - key_by: auction
          - window: {tumbling: 10s, slid: 2s}
          - agg: {x: sum(usd), y: avgg(price)}
          - flter: "x > 1"
        sink: {type: consol}
        late: {type: jsonl}
        checkpoint: {every: 5x, dir: ck}
        """
    with pytest.raises(SpecError) as caught:
        pipeline_from_spec(_spec(tmp_path, text))
    got = [m.split("p.yaml:", 1)[1] for m in caught.value.messages]
    assert got[0].startswith("10: sink.type: 'consol' is not one of 'console', ")
    assert got[1].startswith("3: steps[0].filter: ") and "'prise'" in got[1]
    assert got[2].startswith("4: steps[1].with_columns: ") and "'pryce'" in got[2]
    assert got[3].startswith("5: steps[2].filter: unknown function 'open'")
    assert got[4] == "7: steps[4].window.slid: unknown field; did you mean 'slide'?"
    assert got[5].startswith("8: steps[5].agg.y: unknown aggregation 'avgg'")
    assert got[6] == "9: steps[6]: unknown step 'flter'; did you mean 'filter'?"
    assert got[7] == "11: late.path: is required for type jsonl"
    assert got[8].startswith("12: checkpoint: ") and "5x" in got[8]
    # nothing more: after with_columns failed, sum(usd) is not reported as a missing
    # column (usd is defined there), nor late: as lacking a window (the window is there)
    assert len(got) == 9, got
    # steps out of order are errors, not crashes
    order = """\
        source: {type: nexmark, events: 10, event_time: date_time}
        steps:
          - key_by: auction
          - filter: "price > 1"
          - window: {tumbling: 10s}
        sink: {type: console}
        """
    with pytest.raises(SpecError) as caught:
        pipeline_from_spec(_spec(tmp_path, order, "order.yaml"))
    got = [m.split("order.yaml:", 1)[1] for m in caught.value.messages]
    assert got == ["4: steps[1].filter: filter cannot come right after key_by: the steps go "
                   "key_by (optional), window or over, then agg; or agg right after "
                   "key_by (no window)",
                   "5: steps[2].window: window needs an agg step after it"], got


def test_run_on_the_cli_exit_codes_and_summary(tmp_path: Path) -> None:
    good = _spec(tmp_path, GOOD)
    out = _cli("run", str(good), "--no-live")
    assert out.returncode == 0, out.stderr
    assert "pipeline 'hot' on cpu: 4600 events in" in out.stdout.replace("\n", " ")
    assert pq.read_table(tmp_path / "out" / "hot").num_rows > 0
    stop = _cli("run", str(good), "--no-live", "--max-events", "1000")
    assert stop.returncode == 0 and "1000 events in" in stop.stdout
    assert "stopped at --max-events" in stop.stdout.replace("\n", " ")
    ck = _cli("run", str(good), "--no-live", "--checkpoint-dir", str(tmp_path / "ck"))
    assert ck.returncode == 0 and any((tmp_path / "ck").iterdir())
    # a run that fails while running (a binary file read as CSV) exits 1
    (tmp_path / "bin.csv").write_bytes(b"a,b\n" + bytes(range(256)) * 400)
    spec = _spec(tmp_path, "source: {type: csv, path: bin.csv, schema: {a: int64, b: int64}}\n"
                           "sink: {type: console}\n", "bin.yaml")
    failed = _cli("run", str(spec), "--no-live", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "do not parse as CSV" in failed.stderr.replace("\n", " ")
    # the bad lines went to the default dead-letter file, under the working directory
    assert (tmp_path / "dead-letters" / "pipeline.jsonl").stat().st_size > 0


def test_the_live_view_logs_lines_when_not_a_terminal(tmp_path: Path) -> None:
    good = _spec(tmp_path, GOOD)
    out = _cli("run", str(good))  # stdout is a pipe: plain lines, no terminal codes
    assert out.returncode == 0, out.stderr
    assert "hot: events in 4,600" in out.stdout.replace("\n", " ")
    assert "\x1b[" not in out.stdout


def test_generate_nexmark_writes_parquet(tmp_path: Path) -> None:
    out = _cli("generate", "nexmark", "--events", "10000", "--out", str(tmp_path / "b.parquet"))
    assert out.returncode == 0, out.stderr
    t = pq.read_table(tmp_path / "b.parquet")
    assert t.num_rows == 9200 and "auction" in t.schema.names
    out = _cli("generate", "nexmark", "--events", "1000", "--stream", "all", "--out",
               str(tmp_path / "all"))
    assert out.returncode == 0
    assert sorted(f.name for f in (tmp_path / "all").iterdir()) == [
        "auctions.parquet", "bids.parquet", "persons.parquet"]
    assert _cli("generate", "nexmark", "--stream", "cats", "--out", "x.parquet").returncode == 2


def test_stdin_spec_reads_piped_lines(tmp_path: Path) -> None:
    spec = _spec(tmp_path, """\
        source:
          type: jsonl
          path: "-"
          schema: {ts: int64, v: float64}
          event_time: ts
        steps:
          - window: {tumbling: 10}
          - agg: {n: count(), total: sum(v)}
        sink: {type: jsonl, path: out.jsonl}
        """)
    lines = "".join(json.dumps({"ts": i, "v": i / 2}) + "\n" for i in range(25))
    out = _cli("run", str(spec), "--no-live", "--engine", "cpu", stdin=lines)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["n"], r["total"]) for r in rows] == [(10, 22.5), (10, 72.5), (5, 55.0)]


def test_file_sinks_roll_part_files_and_never_show_half_a_file(tmp_path: Path) -> None:
    table = pa.table({"x": list(range(25)), "s": [f"v{i}" for i in range(25)]})
    for sink, read in [(gs.to_parquet, lambda d: pq.read_table(d).to_pydict()),
                       (gs.to_csv, None), (gs.to_jsonl, None)]:
        d = tmp_path / sink.__name__
        p = gs.Pipeline(engine="cpu")
        p.source(gs.from_arrow(table, batch_rows=7)).sink(sink(d, rows_per_file=10))
        p.run()
        files = sorted(f.name for f in d.iterdir())
        suffix = "." + sink.__name__.removeprefix("to_")
        assert files == [f"part-0000{i}{suffix}" for i in range(3)], files
        if read is not None:
            assert read(d) == table.to_pydict()
    # a second run adds parts, never overwrites
    p = gs.Pipeline(engine="cpu")
    p.source(gs.from_arrow(table)).sink(gs.to_jsonl(tmp_path / "to_jsonl", rows_per_file=100))
    p.run()
    assert len(list((tmp_path / "to_jsonl").iterdir())) == 4
    lines = (tmp_path / "to_jsonl" / "part-00003.jsonl").read_text().splitlines()
    assert [json.loads(x)["x"] for x in lines] == list(range(25))


def test_late_and_dead_letter_streams_route_to_any_sink(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(
        '{"ts": 1000, "v": 1}\n{"ts": 30000, "v": 2}\n{"ts": 2000, "v": 3}\nnot json\n'
        '{"ts": 40000, "v": 4}\n')
    p = gs.Pipeline(engine="cpu", dead_letter=gs.to_parquet(tmp_path / "dead.parquet"))
    s = p.source(gs.read_jsonl(tmp_path / "in.jsonl", max_bad_fraction=1.0), event_time="ts")
    w = s.window(gs.Tumbling("10s"), name="w").agg(n=gs.count())
    w.late.sink(gs.to_parquet(tmp_path / "late.parquet"))
    w.sink(gs.to_csv(tmp_path / "out.csv"))
    stats = p.run()
    assert stats.bad_records == 1 and stats.late_events == 1
    dead = pq.read_table(tmp_path / "dead.parquet").to_pylist()
    assert dead[0]["raw"] == "not json" and json.loads(dead[0]["offset"])["line"] == 4
    assert pq.read_table(tmp_path / "late.parquet").to_pydict() == {"ts": [2000], "v": [3]}
    assert stats.dead_letters == f"parquet {tmp_path / 'dead.parquet'}"


def test_two_stream_joins_in_a_spec_match_the_python_api(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    for name in ("clicks", "views"):
        ts = np.sort(rng.integers(0, 20_000, 800))
        pq.write_table(pa.table({"ts": ts, "user": rng.integers(0, 30, 800),
                                 "n": np.arange(800)}), tmp_path / f"{name}.parquet")
    spec = _spec(tmp_path, """\
        engine: cpu
        source: {type: parquet, path: clicks.parquet, event_time: ts, watermark: 100ms}
        steps:
          - window_join:
              other: {type: parquet, path: views.parquet, event_time: ts, watermark: 100ms,
                      name: views}
              on: user
              window: {tumbling: 1s}
        sink: {type: parquet, path: out/pairs.parquet}
        """)
    pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out" / "pairs.parquet")
    p = gs.Pipeline(engine="cpu")
    wm = gs.Watermark.bounded(100)
    a = p.source(gs.read_parquet(tmp_path / "clicks.parquet"), event_time="ts", watermark=wm)
    b = p.source(gs.read_parquet(tmp_path / "views.parquet"), event_time="ts", watermark=wm,
                 name="views")
    want = a.window_join(b, on="user", window=gs.Tumbling("1s")).collect()
    key = [("n", "ascending"), ("n_right", "ascending")]
    assert got.num_rows > 100 and got.sort_by(key).equals(want.sort_by(key))
    spec = _spec(tmp_path, """\
        engine: cpu
        source: {type: parquet, path: clicks.parquet, event_time: ts}
        steps:
          - interval_join:
              other: {type: parquet, path: views.parquet, event_time: ts, name: views}
              on: [user, user]
              lower: -200ms
              upper: 0
        sink: {type: parquet, path: out/near.parquet}
        """, "near.yaml")
    pipeline_from_spec(spec).run()
    near = pq.read_table(tmp_path / "out" / "near.parquet").to_pylist()
    assert near and all(-200 <= r["ts_right"] - r["ts"] <= 0 and r["user"] == r["user"]
                        for r in near)


def test_kafka_and_redis_sinks_round_trip_through_real_servers(tmp_path: Path) -> None:
    from tests.servers import kafka_broker, redis_server

    table = pa.table({"ts": pa.array([1_000, 2_000, 3_000], pa.timestamp("ms")),
                      "card": ["a", "b", "a"], "amount": [1.5, 2.0, None]})
    schema = {"ts": "timestamp[ms]", "card": "string", "amount": "float64"}
    with kafka_broker() as bootstrap:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("alerts", num_partitions=1,
                                      replication_factor=1)])["alerts"].result(timeout=20)
        p = gs.Pipeline(engine="cpu")
        p.source(gs.from_arrow(table)).sink(gs.to_kafka(
            "alerts", bootstrap, key="card", config={"batch.num.messages": 1}))
        p.run()
        back = [b.data for b in gs.kafka("alerts", bootstrap, schema=schema,
                                         bounded=True).open()]
        assert pa.Table.from_batches(back).equals(table)
    with redis_server() as url:
        p = gs.Pipeline(engine="cpu")
        p.source(gs.from_arrow(table)).sink(gs.to_redis_stream(url, "alerts"))
        p.run()
        back = [b.data for b in gs.redis_stream(url, "alerts", schema=schema,
                                                bounded=True).open()]
        got = pa.Table.from_batches(back)
        assert got["ts"].equals(table["ts"]) and got["card"].equals(table["card"])
        assert got["amount"].to_pylist()[:2] == [1.5, 2.0]


def test_ctrl_c_stops_a_run_cleanly_with_a_summary(tmp_path: Path) -> None:
    import signal
    import time

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(
        json.dumps({"ts": i, "v": i}) + "\n" for i in range(100)))
    spec = _spec(tmp_path, """\
        engine: cpu
        source:
          type: jsonl
          path: in
          follow: true
          schema: {ts: int64, v: int64}
          poll_interval: 20ms
        sink: {type: jsonl, path: out.jsonl}
        """)
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    proc = subprocess.Popen([sys.executable, "-m", "gpustream.cli", "run", str(spec), "--no-live"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.jsonl.*inprogress")):
        time.sleep(0.1)  # the sink writes under a hidden in-progress name until it closes
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "100 events in" in out and "(stopped by SIGINT)" in out.replace("\n", " ")
    rows = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(rows) == 100  # what was read went through and the sink was closed


def test_a_spec_table_with_a_changelog(tmp_path: Path) -> None:
    pq.write_table(pa.table({"card": [1, 2], "limit": [10, 20]}), tmp_path / "cards.parquet")
    (tmp_path / "updates.jsonl").write_text('{"card": 2, "limit": 25, "gone": false}\n')
    (tmp_path / "tx.jsonl").write_text('{"card": 1}\n{"card": 2}\n')
    spec = _spec(tmp_path, """\
        engine: cpu
        source: {type: jsonl, path: tx.jsonl}
        tables:
          cards:
            type: parquet
            path: cards.parquet
            key: card
            changelog: {type: jsonl, path: updates.jsonl}
            delete_column: gone
        steps:
          - join_table: {table: cards, on: card, how: left}
        sink: {type: jsonl, path: out.jsonl}
        """)
    p = pipeline_from_spec(spec)
    assert "changelog" in p.explain()
    p.run()
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    # which version each event sees depends on arrival order: either is a version the
    # table had (the changelog applies while events flow)
    assert rows[0] == {"card": 1, "limit": 10}
    assert rows[1] in ({"card": 2, "limit": 20}, {"card": 2, "limit": 25})
