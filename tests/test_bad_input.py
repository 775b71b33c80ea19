"""Bad input never crashes the process (issue 16): every bad record is a dead letter with
its file, line, raw text and reason; a bad file is named (or skipped); the run goes on."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.ingest.deadletter import EVENT_TIME_MAX, EVENT_TIME_MIN, DeadLetter, DeadLetterFile
from gpustream.ingest.source import Source
from gpustream.jsontext import json_line, json_lines
from gpustream.kernels.windows import DROPPED, LATE, ON_TIME, assign_windows

I64_MAX = 2**63 - 1


def _strict_json(line: str) -> Any:
    """``json.loads`` that refuses ``Infinity`` and ``NaN``, which are not JSON."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")
    return json.loads(line, parse_constant=refuse)


def _letters(path: Path) -> list[dict[str, Any]]:
    return [_strict_json(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(tmp_path: Path, source: Source, event_time: str | None = "ts",
         ) -> tuple[pa.Table, list[dict[str, Any]], gs.RunStats]:
    """Run ``source`` into a list; its rows, dead letters and stats."""
    dead = tmp_path / "dead.jsonl"
    dead.unlink(missing_ok=True)
    p = gs.Pipeline("bad-input", engine="cpu", dead_letter=dead)
    rows: list[pa.RecordBatch] = []
    p.source(source, event_time=event_time).sink(gs.to_callback(rows.append))
    stats = p.run()
    return pa.Table.from_batches(rows, schema=source.schema()), _letters(dead), stats


# 1. a JSONL record `null` -------------------------------------------------------------

_NULL_SCRIPT = """
import json, sys
import gpustream as gs
d = sys.argv[1]
out = {}
for name, kw in [("mixed", {}), ("only", {"schema": {"ts": "int64", "v": "int64"}}),
                 ("dir", {})]:
    dead = f"{d}/dead-{name}.jsonl"
    p = gs.Pipeline(name, engine="cpu", dead_letter=dead)
    rows = []
    path = f"{d}/{name}" if name == "dir" else f"{d}/{name}.jsonl"
    p.source(gs.read_jsonl(path, **kw), event_time="ts").sink(gs.to_callback(rows.append))
    stats = p.run()
    letters = [json.loads(x) for x in open(dead)] if stats.bad_records else []
    out[name] = {"ts": [t for rb in rows for t in rb.column("ts").to_pylist()],
                 "dead": [(x["offset"]["file"].rsplit("/", 1)[1], x["offset"]["line"], x["raw"],
                           x["reason"]) for x in letters]}
print(json.dumps(out))
"""


def test_null_records_are_dead_letters_and_never_crash(tmp_path: Path) -> None:
    # pyarrow's JSON reader crashes the process (SIGSEGV) on a chunk of `null` lines, and
    # reads a `null` line among objects as a row of nulls: so this runs in a subprocess
    (tmp_path / "mixed.jsonl").write_text(
        '{"ts": 1, "v": 10}\nnull\n{"ts": oops}\nnull\n  null \n{"ts": 2, "v": 20}\n'
        '[1, 2]\n7\n\n{"ts": 3, "v": 30}\n')
    (tmp_path / "only.jsonl").write_text("null\nnull\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text("null\n")  # sorts first, has no schema to give
    (tmp_path / "dir" / "b.jsonl").write_text('{"ts": 5, "v": 1}\n')
    done = subprocess.run([sys.executable, "-c", _NULL_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mixed"]["ts"] == [1, 2, 3]
    assert [(f, line, raw) for f, line, raw, _ in out["mixed"]["dead"]] == [
        ("mixed.jsonl", 2, "null"), ("mixed.jsonl", 3, '{"ts": oops}'),
        ("mixed.jsonl", 4, "null"), ("mixed.jsonl", 5, "  null "),
        ("mixed.jsonl", 7, "[1, 2]"), ("mixed.jsonl", 8, "7")]
    assert "not a JSON object" in out["mixed"]["dead"][0][3]
    assert out["only"] == {"ts": [], "dead": [["only.jsonl", 1, "null", out["only"]["dead"][0][3]],
                                              ["only.jsonl", 2, "null", out["only"]["dead"][1][3]]]}
    assert out["dir"]["ts"] == [5] and [d[:3] for d in out["dir"]["dead"]] == [["a.jsonl", 1, "null"]]


# 2. microsecond timestamps ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_microsecond_timestamps_are_read_into_a_millisecond_column(tmp_path: Path,
                                                                   fmt: str) -> None:
    stamps = ["2024-01-01T00:00:00.001", "2024-01-01T00:00:00.123456", "2024-01-01T00:00:01"]
    path = tmp_path / f"a.{fmt}"
    if fmt == "csv":
        path.write_text("ts,v\n" + "".join(f"{s},{i}\n" for i, s in enumerate(stamps)))
    else:
        path.write_text("".join(json.dumps({"ts": s, "v": i}) + "\n" for i, s in enumerate(stamps)))
    reader = gs.read_csv if fmt == "csv" else gs.read_jsonl
    rows, dead, _ = _run(tmp_path, reader(path, schema_overrides={"ts": "timestamp[ms]"}))
    assert dead == []
    base = 1704067200000  # 2024-01-01 in epoch ms; the microseconds are cut, as Flink does
    assert rows["ts"].cast(pa.int64()).to_pylist() == [base + 1, base + 123, base + 1000]


def test_epoch_microseconds_in_a_millisecond_column_are_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("ts,v\n1704067200000,1\n1704067200123456,2\n1704067201000,3\n")
    rows, dead, stats = _run(tmp_path, gs.read_csv(path, schema_overrides={"ts": "timestamp[ms]"}))
    assert rows["v"].to_pylist() == [1, 3] and stats.bad_records == 1
    assert dead[0]["raw"] == "1704067200123456,2" and dead[0]["offset"]["line"] == 3
    assert "year 55970" in dead[0]["reason"] and "another unit" in dead[0]["reason"]


def test_json_text_is_total_for_timestamps_python_cannot_hold() -> None:
    ts = pa.array([0, 1704067200123456, -(2**62), None], pa.int64()).view(pa.timestamp("ms"))
    got = [_strict_json(x)["ts"] for x in json_lines(pa.record_batch({"ts": ts})).splitlines()]
    assert got[0] == "1970-01-01T00:00:00" and got[3] is None  # in range: as before
    assert got[1].startswith("55969-09-28T00:02:03.456")  # outside: ISO text, extended years
    for text, value in zip(got[1:3], [1704067200123456, -(2**62)], strict=True):
        assert np.datetime64(text, "ms").astype(np.int64) == value  # and exact


# 3. invalid UTF-8 --------------------------------------------------------------------------

def test_invalid_utf8_in_a_json_string_is_a_dead_letter_at_ingest(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"ts": 1, "s": "ok"}\n{"ts": 2, "s": "a\xffb"}\n{"ts": 3, "s": "fine"}\n')
    rows, dead, _ = _run(tmp_path, gs.read_jsonl(path))
    assert rows["s"].to_pylist() == ["ok", "fine"]
    assert [(d["offset"]["line"], d["raw"]) for d in dead] == [(2, '{"ts": 2, "s": "a\\xffb"}')]
    assert "column 's'" in dead[0]["reason"] and "UTF-8" in dead[0]["reason"]


def test_json_text_is_total_for_invalid_utf8() -> None:
    bad = pa.array([b"ok", b"a\xffb", None], pa.binary()).view(pa.string())
    assert [_strict_json(x)["s"] for x in json_lines(pa.record_batch({"s": bad})).splitlines()] \
        == ["ok", "a\\xffb", None]


# 4. one text value among numbers -----------------------------------------------------------

def test_one_text_event_time_does_not_make_a_column_of_numbers_text(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("ts,v\n" + "".join(f"{'yesterday' if i == 500 else i * 1000},{i}\n"
                                       for i in range(2001)))
    for overrides in (None, {"ts": "timestamp[ms]"}):
        src = gs.read_csv(path, schema_overrides=overrides)
        rows, dead, stats = _run(tmp_path, src)
        assert stats.events_in == 2000 and rows.num_rows == 2000
        assert [(d["offset"]["line"], d["raw"]) for d in dead] == [(502, "yesterday,500")]
    assert src.schema().field("ts").type == pa.timestamp("ms")
    assert gs.read_csv(path).schema().field("ts").type == pa.int64()


def test_a_column_of_text_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"  # codes that are mostly numbers, but clearly text
    path.write_text("ts,code\n" + "".join(f"{i},{'A' + str(i) if i % 10 == 0 else i}\n"
                                          for i in range(200)))
    assert gs.read_csv(path).schema().field("code").type == pa.string()
    path.write_text("ts,x\n1,2.5\n2,3\n3,4\n")  # a float among integers: floats
    assert gs.read_csv(path).schema().field("x").type == pa.float64()


def test_one_odd_jsonl_line_first_does_not_decide_a_type(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"ts": "yesterday", "v": 1}\n'
                    + "".join(json.dumps({"ts": i * 10, "v": i}) + "\n" for i in range(1, 300)))
    src = gs.read_jsonl(path)
    assert src.schema().field("ts").type == pa.int64()
    rows, dead, _ = _run(tmp_path, src)
    assert rows.num_rows == 299 and [d["offset"]["line"] for d in dead] == [1]


# 5. bad files ------------------------------------------------------------------------------

def _corrupt_parquet(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x00" * 64  # the middle of the data pages
    data[-40:-8] = b"\xff" * 32  # and the footer
    path.write_bytes(bytes(data))


def _columnar_files(tmp_path: Path, kind: str) -> tuple[Any, str]:
    for i in range(3):
        t = pa.table({"ts": np.arange(i * 100, i * 100 + 100), "v": np.ones(100)})
        if kind == "parquet":
            pq.write_table(t, tmp_path / f"p{i}.parquet")
        else:
            with pa.OSFile(str(tmp_path / f"p{i}.arrow"), "wb") as sink, \
                    ipc.new_file(sink, t.schema) as w:
                w.write_table(t)
    bad = tmp_path / f"p1.{kind}"
    if kind == "parquet":
        _corrupt_parquet(bad)
    else:
        bad.write_bytes(os.urandom(500))
    return (gs.read_parquet if kind == "parquet" else gs.read_arrow_ipc), str(bad)


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_a_corrupt_columnar_file_is_named_or_skipped(tmp_path: Path, kind: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    reader, bad = _columnar_files(tmp_path, kind)
    with pytest.raises(gs.IngestError, match=rf"cannot read {bad} .*on_bad_file='skip'"):
        list(reader(tmp_path).open())
    with caplog.at_level(logging.WARNING, logger="gpustream"):
        src = reader(tmp_path, on_bad_file="skip")
        rows, dead, _ = _run(tmp_path, src)
    assert rows["ts"].to_pylist() == list(range(100)) + list(range(200, 300))
    assert src.skipped_files == [bad] and dead == []
    assert [r for r in caplog.records if bad in r.getMessage() and r.levelno == logging.WARNING]


def test_a_corrupt_first_parquet_file_gives_way_to_the_next_with_skip(tmp_path: Path) -> None:
    pq.write_table(pa.table({"ts": [1, 2]}), tmp_path / "b.parquet")
    (tmp_path / "a.parquet").write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(gs.IngestError, match=r"a\.parquet"):
        gs.read_parquet(tmp_path)
    src = gs.read_parquet(tmp_path, on_bad_file="skip")
    assert [b.data["ts"].to_pylist() for b in src.open()] == [[1, 2]]
    assert src.skipped_files == [str(tmp_path / "a.parquet")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_binary_text_file_is_named_or_skipped(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(3)
    header = "ts,v\n" if fmt == "csv" else ""
    good = ("{i},{i}\n" if fmt == "csv" else '{{"ts": {i}, "v": {i}}}\n')
    (tmp_path / f"a.{fmt}").write_text(header + "".join(good.format(i=i) for i in range(50)))
    (tmp_path / f"b.{fmt}").write_bytes(rng.bytes(20_000))  # binary, header included
    (tmp_path / f"c.{fmt}").write_text(header + "".join(good.format(i=i) for i in range(50, 90)))
    reader = gs.read_csv if fmt == "csv" else gs.read_jsonl
    with pytest.raises(gs.IngestError, match=rf"b\.{fmt}"):
        _run(tmp_path, reader(tmp_path))
    src = reader(tmp_path, on_bad_file="skip")
    rows, dead, _ = _run(tmp_path, src)
    assert rows["ts"].to_pylist() == list(range(90))
    assert src.skipped_files == [str(tmp_path / f"b.{fmt}")]
    assert all(d["offset"]["file"].endswith(f"b.{fmt}") for d in dead)


@pytest.mark.parametrize("reader", [gs.read_parquet, gs.read_arrow_ipc, gs.read_csv,
                                    gs.read_jsonl])
def test_on_bad_file_is_validated(tmp_path: Path, reader: Any) -> None:
    with pytest.raises(gs.IngestError, match=r"on_bad_file must be 'fail' or 'skip', got 'drop'"):
        reader(tmp_path / "none", on_bad_file="drop")


# 6. values JSON cannot write; dead letters that say where ----------------------------------

def test_infinite_values_are_written_as_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("ts,v\n1,1.5\n,1e400\n3,-1e400\n")
    rows, dead, _ = _run(tmp_path, gs.read_csv(path))
    assert rows["v"].to_pylist() == [1.5, float("-inf")]
    # the dead letter names the file and line and keeps the raw text; it is valid JSON
    assert [(d["offset"], d["raw"], d["reason"]) for d in dead] == [
        ({"file": str(path), "line": 3, "byte": 11}, ",1e400", "missing event time 'ts'")]
    # non-finite floats are null, as Polars' write_ndjson and pandas' to_json write them
    assert [_strict_json(x) for x in json_lines(rows).splitlines()] == [
        {"ts": 1, "v": 1.5}, {"ts": 3, "v": None}]
    assert _strict_json(json_line({"v": [float("nan")], "w": {"x": float("inf")}})) == {
        "v": [None], "w": {"x": None}}


def test_missing_event_times_in_jsonl_name_file_line_and_raw_text(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"ts": 1, "v": 1}\n\n{"v": 2}\n{"ts": 3, "v": 3}\n   \n{"ts": null}\n')
    rows, dead, _ = _run(tmp_path, gs.read_jsonl(path, max_rows=3))
    assert rows["v"].to_pylist() == [1, 3]
    assert [(d["offset"]["line"], d["raw"]) for d in dead] == [(3, '{"v": 2}'),
                                                               (6, '{"ts": null}')]


# 7. event times at int64's limits ------------------------------------------------------

@pytest.mark.parametrize("assigner", [gs.Tumbling(10), gs.Sliding(10, 5)],
                         ids=["tumbling", "sliding"])
def test_event_times_at_int64_limits_are_dead_letters_not_overflows(
        tmp_path: Path, backend: gs.Backend, assigner: gs.WindowAssigner) -> None:
    ts = [EVENT_TIME_MAX - 21, 5, I64_MAX, EVENT_TIME_MAX, I64_MAX - 3, -(2**63) + 1,
          EVENT_TIME_MIN, 7]
    dead = tmp_path / "dead.jsonl"
    p = gs.Pipeline("edges", engine=backend.name, dead_letter=dead)
    s = p.source(gs.from_arrow({"ts": ts, "v": list(range(len(ts)))}), event_time="ts",
                 watermark=gs.Watermark.bounded(0))
    got = s.window(assigner, name="w").agg(n=gs.count(), v=gs.col("v").sum()).collect()
    letters = _letters(dead)
    assert sorted(_strict_json(d["raw"])["ts"] for d in letters) == [-(2**63) + 1, I64_MAX - 3,
                                                                     I64_MAX]
    assert all("out of range" in d["reason"] for d in letters)
    # the events in range: their windows as Python's exact integers compute them, with
    # each event's watermark (the largest event time before it)
    size, slide = (10, 10) if isinstance(assigner, gs.Tumbling) else (10, 5)
    want: dict[tuple[int, int], list[int]] = {}
    wm: int | None = None
    for i, t in enumerate(ts):
        if not EVENT_TIME_MIN <= t <= EVENT_TIME_MAX:
            continue
        last = t - t % slide
        for start in range(last, t - size, -slide):
            if wm is None or start + size > wm:
                want.setdefault((start, start + size), []).append(i)
        wm = t if wm is None else max(wm, t)
    rows = sorted(zip(got["window_start"].to_pylist(), got["window_end"].to_pylist(),
                      got["n"].to_pylist(), got["v"].to_pylist(), strict=True))
    assert rows == sorted((a, b, len(v), sum(v)) for (a, b), v in want.items())
    assert any(b > EVENT_TIME_MAX for _, b, _, _ in rows)  # the last window in range fired


def test_assign_windows_saturates_window_ends_and_never_overflows(backend: gs.Backend) -> None:
    xp = backend.xp
    ts = xp.asarray(np.array([I64_MAX - 3, 100], dtype=np.int64))
    wm = xp.asarray(np.array([I64_MAX - 20, I64_MAX - 20], dtype=np.int64))
    starts, status = assign_windows(ts, None, wm, 10, 5, 0, 0, backend)
    last = (I64_MAX - 3) - (I64_MAX - 3) % 5
    assert np.asarray(starts).tolist() == [last, last - 5, 100, 95]
    # [last, last + 10) ends past int64: its end saturates, so it is open, not long past
    assert np.asarray(status).tolist() == [ON_TIME, ON_TIME, DROPPED, DROPPED]
    # lateness near both limits: end - watermark would overflow
    ts = xp.asarray(np.array([EVENT_TIME_MIN, EVENT_TIME_MAX - 50], dtype=np.int64))
    wm = xp.asarray(np.array([EVENT_TIME_MAX, EVENT_TIME_MAX], dtype=np.int64))
    _, status = assign_windows(ts, None, wm, 10, 10, 0, 100, backend)
    assert np.asarray(status).tolist() == [DROPPED, LATE]


# 8. the default dead-letter path --------------------------------------------------------

@pytest.mark.parametrize("name", ["/tmp/x", "../../x", "..", "a/../../b", "", "ok-name.v2"])
def test_pipeline_names_never_put_dead_letters_outside_their_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    p = gs.Pipeline(name, engine="cpu")
    assert isinstance(p.dead_letter, Path)
    folder = (tmp_path / "dead-letters").resolve()
    assert p.dead_letter.resolve().parent == folder
    if name == "ok-name.v2":
        assert p.dead_letter == DeadLetterFile.default_path(name) == Path(
            "dead-letters/ok-name.v2.jsonl")
    (tmp_path / "a.csv").write_text("ts,v\n1,2\n,3\n")
    p.source(gs.read_csv(tmp_path / "a.csv"), event_time="ts").sink(
        gs.to_callback(lambda rb: None))
    assert p.run().bad_records == 1
    assert [f.parent.resolve() for f in tmp_path.rglob("*.jsonl")] == [folder]


def test_distinct_names_get_distinct_files() -> None:
    names = ["a/b", "a_b", "a:b", "/a/b"]
    assert len({DeadLetterFile.default_path(n) for n in names}) == len(names)


def test_dead_letter_files_stay_valid_json(tmp_path: Path) -> None:
    f = DeadLetterFile(tmp_path / "d.jsonl")
    f.write([DeadLetter("x", "s", {"v": float("nan")}, "r")])
    f.close()
    assert _letters(tmp_path / "d.jsonl")[0]["offset"] == {"v": None}



def test_the_jsonl_sink_writes_valid_json_for_non_finite_floats(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    p = gs.Pipeline("nonfinite", engine="cpu")
    p.source(gs.from_arrow({"x": [1.5, float("inf"), float("-inf"), float("nan")]})).sink(
        gs.to_jsonl(out))
    p.run()
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
            for line in out.read_text().splitlines()]
    assert [r["x"] for r in rows] == [1.5, None, None, None]


@pytest.mark.parametrize("schema", [True, False])
def test_deeply_nested_json_is_a_dead_letter_not_a_crash(tmp_path: Path, schema: bool) -> None:
    deep = 30_000
    (tmp_path / "in.jsonl").write_text(
        '{"ts": 1, "v": 0.5}\n'
        '{"ts": 2, "v": ' + "[" * deep + "]" * deep + '}\n'
        '{"ts": 3, "v": 1.5, "s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}\n')
    code = (
        "import gpustream as gs, json\n"
        f"src = gs.read_jsonl('in.jsonl'{', schema={}'.format(repr({'ts': 'int64', 'v': 'float64', 's': 'string'})) if schema else ''})\n"
        "rows, bad = 0, []\n"
        "for b in src.open():\n"
        "    rows += b.data.num_rows\n"
        "    bad += [(d.offset, d.reason) for d in b.rejects]\n"
        "print(json.dumps([rows, bad]))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, bad = json.loads(done.stdout)
    assert rows == 2  # the line with brackets inside a string is not too deep
    assert len(bad) == 1 and bad[0][0]["line"] == 2 and "nested 30001 levels" in bad[0][1]


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_dead_letters_are_never_written_through_a_symlink(tmp_path: Path) -> None:
    from gpustream.errors import IngestError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "bad.jsonl").symlink_to(victim)
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n{broken\n')
    p = gs.Pipeline("sym", engine="cpu", dead_letter=tmp_path / "bad.jsonl")
    p.source(gs.read_jsonl(tmp_path / "in.jsonl", schema={"x": "int64"})).sink(
        gs.to_callback(lambda rb: None))
    with pytest.raises(IngestError, match="is a symbolic link"):
        p.run()
    assert victim.read_text() == "precious\n"
