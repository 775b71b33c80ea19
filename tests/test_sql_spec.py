"""``sql:`` in YAML specs: a query over the spec's named sources (``sources:``, a named
``source:``, ``tables:``), its result a stream like any other (steps, sinks), its errors
placed at the spec's line of the query's line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import gpustream as gs
from gpustream.spec import check_spec, pipeline_from_spec

BIDS = "{type: nexmark, stream: bids, events: 3000, seed: 1"
WINDOWED = """\
CREATE VIEW big AS SELECT * FROM bid WHERE price > 1000;
SELECT auction, window_start, window_end, COUNT(*) AS n, MAX(price) AS top
FROM TABLE(TUMBLE(TABLE big, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY auction, window_start, window_end"""


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _run(tmp_path: Path, spec: str) -> pa.Table:
    """Run the spec (its sink: out.parquet) and read what it wrote."""
    f = tmp_path / "p.yaml"
    f.write_text(spec + "sink: {type: parquet, path: out.parquet}\n")
    stats = pipeline_from_spec(f, "cpu").run()
    assert stats.events_in > 0
    return pq.read_table(tmp_path / "out.parquet")


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([(c, "ascending") for c in t.column_names])


def _errors(tmp_path: Path, spec: str) -> list[str]:
    f = tmp_path / "p.yaml"
    f.write_text(spec)
    return [e.split("p.yaml:", 1)[1] for e in check_spec(f, "cpu").errors]


def _api_windowed() -> pa.Table:
    """The windowed query with the Python API (no SQL)."""
    p = gs.Pipeline(engine="cpu")
    bids = p.source(gs.nexmark(events=3000, seed=1).bids, event_time="date_time",
                    watermark=gs.Watermark.bounded("2s"))
    return bids.filter(gs.col("price") > 1000).key_by("auction").window(
        gs.Tumbling("10s")).agg(n=gs.count(), top=gs.col("price").max()).collect()


def test_sql_spec_runs_and_equals_the_python_api(tmp_path: Path) -> None:
    got = _run(tmp_path, f"""\
name: hot
sources:
  bid: {BIDS}, event_time: date_time, watermark: 2s}}
sql: |
{_indented(WINDOWED)}
""")
    want = _api_windowed()
    assert want.num_rows > 100
    assert got.schema == want.schema
    assert _sorted(got).equals(_sorted(want))
    # the same text through Pipeline.sql gives the same rows too
    p = gs.Pipeline(engine="cpu")
    p.source(gs.nexmark(events=3000, seed=1).bids, event_time="date_time",
             watermark=gs.Watermark.bounded("2s"), name="bid")
    assert _sorted(p.sql(WINDOWED).collect()).equals(_sorted(want))


def test_create_table_in_sql_gives_a_source_without_event_time_its_watermark(
        tmp_path: Path) -> None:
    ddl = ("CREATE TABLE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),\n"
           "  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND);\n")
    got = _run(tmp_path, f"""\
source: {BIDS}, name: bid}}
sql: |
{_indented(ddl + WINDOWED)}
""")
    assert _sorted(got).equals(_sorted(_api_windowed()))


def test_steps_apply_to_the_query_result_and_tables_join(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1000, 1001, 1002], "label": ["x", "y", "z"]}),
                   tmp_path / "labels.parquet")
    got = _run(tmp_path, f"""\
sources:
  bid: {BIDS}}}
tables:
  labels: {{type: parquet, path: labels.parquet, key: a}}
sql: "SELECT b.auction, b.price, l.label FROM bid AS b JOIN labels AS l ON b.auction = l.a"
steps:
  - filter: "price > 1000000"
  - with_columns: {{usd: "price // 100"}}
""")
    bids = pa.Table.from_batches([b.data for b in gs.nexmark(events=3000, seed=1).bids.open()])
    label = {1000: "x", 1001: "y", 1002: "z"}
    want = [(a, p, label[a], p // 100) for a, p in zip(bids["auction"].to_pylist(),
                                                      bids["price"].to_pylist(), strict=True)
            if a in label and p > 1_000_000]
    assert want
    assert got.column_names == ["auction", "price", "label", "usd"]
    assert sorted(zip(*got.to_pydict().values(), strict=True)) == sorted(want)


def test_a_bad_query_names_the_spec_line_the_sql_line_and_column(tmp_path: Path) -> None:
    block = f"""\
name: x
sources:
  bid: {BIDS}, event_time: date_time, watermark: 2s}}
sql: |
  SELECT auction,
         prise
  FROM bid
sink: {{type: console}}
"""
    assert _errors(tmp_path, block) == [
        "6: sql: SQL line 2, column 8 ('prise'): unknown column 'prise' (did you mean "
        "'price'?); the columns here: bid.auction, bid.bidder, bid.price, bid.channel, "
        "bid.url, bid.date_time, bid.extra"]
    one_line = block.replace("sql: |\n  SELECT auction,\n         prise\n  FROM bid\n",
                             "sql: SELECT auction FROM bidz\n")
    (err,) = _errors(tmp_path, one_line)
    assert err.startswith("4: sql: SQL line 1, column 21 ('bidz'): unknown table 'bidz'"), err
    # a folded block: its lines are not the file's, so the error is at the sql: key
    folded = block.replace("sql: |", "sql: >")
    (err,) = _errors(tmp_path, folded)
    assert err.startswith("4: sql: SQL line 2, column 8 ('prise'): "), err


def test_sql_spec_structure_errors_name_the_field(tmp_path: Path) -> None:
    src = f"{BIDS}}}"
    sink = "sink: {type: console}\n"
    assert _errors(tmp_path, f"source: {src}\nsql: SELECT * FROM bid\n{sink}") == [
        "1: source.name: is required with sql: the name the query reads it by (FROM name)"]
    assert _errors(tmp_path, f"sql: SELECT * FROM bid\n{sink}") == [
        "1: sql: needs its inputs: sources: {name: {type: parquet, path: ...}} (FROM name), "
        "or a source: with a name"]
    assert _errors(tmp_path, f"sources:\n  bid: {src}\n{sink}") == [
        "1: source: is required (or sql: with its sources:)",
        "1: sources: names the inputs of a sql: query; without sql:, a spec reads one "
        "source: (join or union the others in steps), or add the sql:"]
    assert _errors(tmp_path, f"sources:\n  bid: {BIDS}, name: bids}}\n"
                             f"sql: SELECT * FROM bid\n{sink}") == [
        "2: sources.bid.name: 'bids' is not its key 'bid', the name the query reads it by; "
        "remove name:"]
    assert _errors(tmp_path, f"sources:\n  bid: {src}\nsql: '  '\n{sink}") == [
        "3: sql: is empty: give a query, e.g. sql: SELECT * FROM bids"]
    assert _errors(tmp_path, f"sources:\n  bid: {src}\nsql: [1]\n{sink}") == [
        "3: sql: input should be a valid string (got [1])"]
    # a source that fails is reported, and the query over it is not checked
    assert _errors(tmp_path, "sources:\n  bid: {type: parquet, path: nope.parquet}\n"
                             f"sql: SELECT * FROM bidz\n{sink}")[0].startswith(
        "2: sources.bid.path: no file matches")


def test_validate_reports_a_bad_query_and_explain_shows_the_plan(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "p.yaml"
    good = (f"engine: cpu\nsources:\n  bid: {BIDS}, event_time: date_time, "
            "watermark: 2s}\nsql: SELECT auction, price FROM bid WHERE price > 5\n"
            "sink: {type: console}\n")
    f.write_text(good)
    cli = [sys.executable, "-m", "gpustream.cli"]
    ok = subprocess.run([*cli, "explain", str(f)], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "'bid': nexmark" in ok.stdout and "filter" in ok.stdout, ok.stdout
    f.write_text(good.replace("price > 5", "prise > 5"))
    bad = subprocess.run([*cli, "validate", str(f)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert f"{f}:4: sql: SQL line 1, column " in bad.stderr and "'prise'" in bad.stderr
    assert "Traceback" not in bad.stderr
