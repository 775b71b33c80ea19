"""JSONL, CSV and Arrow IPC sources: every record once, in order; bad ones as dead letters."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.ingest.source import Source, SourceBatch


def _records(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "ts": start + np.sort(rng.integers(0, 50_000, n)),
        "k": rng.choice(["alpha", "beta", "gamma", "δelta"], n),
        "v": np.round(rng.normal(size=n), 6),
        "n": rng.integers(-1000, 1000, n),
    })


def _write_jsonl(path: Path, df: pd.DataFrame) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    df.to_csv(path, index=False)


def _checksum(t: pa.Table) -> tuple[int, float, int, list[str]]:
    return (t.num_rows, round(pa.compute.sum(t["v"]).as_py() or 0.0, 4),
            pa.compute.sum(t["n"]).as_py() or 0, t["k"].to_pylist())


def _read_all(src: Source, offset: Any = None) -> tuple[pa.Table, list[SourceBatch]]:
    batches = list(src.open(offset))
    return pa.Table.from_batches([b.data for b in batches], schema=src.schema()), batches


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("max_rows", [1, 7, 1000, 65_536])
def test_text_sources_yield_every_record_in_order(tmp_path: Path, fmt: str,
                                                  max_rows: int) -> None:
    parts = [_records(n, seed=i, start=100_000 * i) for i, n in enumerate([0, 900, 1, 2500])]
    for i, df in enumerate(parts):
        (_write_jsonl if fmt == "jsonl" else _write_csv)(tmp_path / f"p{i}.{fmt}", df)
    want = pd.concat(parts[1:], ignore_index=True)  # p0 is empty (csv: a header only)
    reader = gs.read_jsonl if fmt == "jsonl" else gs.read_csv
    src = reader(tmp_path if max_rows != 7 else tmp_path / f"p*.{fmt}",
                 schema_overrides={"ts": "timestamp[ms]"}, max_rows=max_rows)
    assert src.schema().names == ["ts", "k", "v", "n"]
    assert src.schema().field("ts").type == pa.timestamp("ms")
    got, batches = _read_all(src)
    assert all(0 < b.data.num_rows <= max_rows for b in batches)
    assert not any(b.rejects for b in batches)
    assert got["ts"].cast(pa.int64()).to_pylist() == want["ts"].tolist()
    assert got["k"].to_pylist() == want["k"].tolist()
    np.testing.assert_array_equal(got["v"].to_numpy(), want["v"].to_numpy())
    assert got["n"].to_pylist() == want["n"].tolist()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_sources_resume_from_every_offset(tmp_path: Path, fmt: str) -> None:
    parts = [_records(n, seed=i, start=100_000 * i) for i, n in enumerate([300, 200])]
    for i, df in enumerate(parts):
        (_write_jsonl if fmt == "jsonl" else _write_csv)(tmp_path / f"p{i}.{fmt}", df)
    reader = gs.read_jsonl if fmt == "jsonl" else gs.read_csv
    src = reader(tmp_path, max_rows=64)
    whole, batches = _read_all(src)
    done = 0
    for b in batches:
        done += b.data.num_rows
        rest, _ = _read_all(src, json.loads(json.dumps(b.offset)))  # offsets are plain data
        assert _checksum(rest) == _checksum(whole.slice(done))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_bad_records_become_dead_letters_and_the_good_ones_all_count(tmp_path: Path,
                                                                     fmt: str) -> None:
    df = _records(2000, seed=5)
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in df.to_dict("records")]
        bad = {17: '{"ts": 5, "k": "alpha", "v": 1.0, "n": 1',            # cut short
               301: '{"ts": 9, "k": "beta", "v": "lots", "n": 2}',         # wrong type
               302: "\x00\x01binary\udcff",                                   # garbage
               999: '{"k": "gamma", "v": 1.5, "n": 3}'}                   # no event time
    else:
        lines = df.to_csv(index=False).splitlines()[1:]
        bad = {17: "5,alpha,1.0",                                           # a column short
               301: "9,beta,lots,2",                                        # wrong type
               302: "\x00\x01binary\udcff",
               999: ",gamma,1.5,3"}                                         # no event time
    for i, text in sorted(bad.items()):
        lines.insert(i, text)
    header = "" if fmt == "jsonl" else "ts,k,v,n\n"
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    dead = tmp_path / "dead" / "letters.jsonl"
    p = gs.Pipeline("bad-input", engine="cpu", dead_letter=dead)
    reader = gs.read_jsonl if fmt == "jsonl" else gs.read_csv
    s = p.source(reader(path, schema={"ts": "int64", "k": "string", "v": "float64", "n": "int64"},
                        max_rows=256), event_time="ts")
    out = s.key_by("k").window(gs.Tumbling(10_000), name="w").agg(
        c=gs.count(), v=gs.col("v").sum(), n=gs.col("n").sum())
    rows: list[pa.RecordBatch] = []
    out.sink(gs.to_callback(rows.append))
    stats = p.run()

    # every good record was processed: the windows equal pandas over the good rows
    got = pa.Table.from_batches(rows).to_pandas().sort_values(["window_start", "k"])
    ref = df.assign(window_start=df.ts // 10_000 * 10_000).groupby(
        ["window_start", "k"], as_index=False).agg(c=("v", "size"), v=("v", "sum"), n=("n", "sum"))
    assert got["c"].tolist() == ref["c"].tolist()
    np.testing.assert_allclose(got["v"].to_numpy(), ref["v"].to_numpy(), rtol=1e-9)
    assert got["n"].tolist() == ref["n"].tolist()
    assert stats.events_in == len(df)

    # every bad record is a dead letter, with its line, its raw text and a reason
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert stats.bad_records == len(letters) == 4
    line_of = {i: i + 1 + (fmt == "csv") for i in bad}  # 1-based, after the header
    by_line = {d["offset"].get("line"): d for d in letters if "line" in d["offset"]}
    for i in (17, 301, 302):
        d = by_line[line_of[i]]
        assert d["raw"] == bad[i].replace("\udcff", "\\xff")  # an undecodable byte
        assert d["source"].startswith(f"read_{fmt}(")
        assert d["offset"]["file"] == str(path)
        assert d["reason"]
    assert "column" in by_line[line_of[301]]["reason"] or "JSON" in by_line[line_of[301]]["reason"]
    missing = [d for d in letters if d["reason"] == "missing event time 'ts'"]
    assert len(missing) == 1 and missing[0]["raw"] == bad[999]  # the line as it was
    assert missing[0]["offset"]["file"] == str(path)
    assert missing[0]["offset"]["line"] == line_of[999]


def test_csv_reasons_name_the_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("ts,price\n1,2.5\n2,cheap\n")
    src = gs.read_csv(tmp_path / "a.csv", schema_overrides={"price": "float64"})
    (batch,) = src.open()
    assert [d.reason for d in batch.rejects] == [
        "In CSV column #1 ('price'): CSV conversion error to double: invalid value 'cheap'"]
    assert batch.rejects[0].offset == {"file": str(tmp_path / "a.csv"), "line": 3, "byte": 15}


def test_a_file_of_another_format_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "good.csv").write_text("ts,v\n" + "".join(f"{i},{i}\n" for i in range(50)))
    pq.write_table(pa.table({"x": rng.normal(size=5000)}), tmp_path / "oops.parquet")
    (tmp_path / "z.csv").write_bytes(b"ts,v\n" + (tmp_path / "oops.parquet").read_bytes())
    p = gs.Pipeline(engine="cpu", dead_letter=tmp_path / "dead.jsonl")
    p.source(gs.read_csv(tmp_path)).sink(gs.to_callback(lambda rb: None))
    with pytest.raises(gs.IngestError, match=r"z.csv: \d+ of \d+ records do not parse as CSV"
                                             r".*raise max_bad_fraction"):
        p.run()
    # below the threshold the user set, the same file only feeds the dead-letter file
    p = gs.Pipeline(engine="cpu", dead_letter=tmp_path / "dead2.jsonl")
    p.source(gs.read_csv(tmp_path, max_bad_fraction=1.0)).sink(gs.to_callback(lambda rb: None))
    stats = p.run()
    assert stats.events_in >= 50 and stats.bad_records > 10
    assert len((tmp_path / "dead2.jsonl").read_text().splitlines()) == stats.bad_records


def test_schema_errors_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("ts,v\n1,2\n")
    with pytest.raises(gs.IngestError, match=r"'integer' is not an Arrow type name"):
        gs.read_csv(tmp_path, schema={"ts": "integer"})
    with pytest.raises(gs.IngestError, match=r"schema column\(s\) w are not in the header"):
        gs.read_csv(tmp_path, schema={"ts": "int64", "w": "int64"})
    with pytest.raises(gs.IngestError, match=r"schema= .* or schema_overrides="):
        gs.read_csv(tmp_path, schema={"ts": "int64"}, schema_overrides={"v": "int64"})
    with pytest.raises(gs.IngestError, match="column names are unknown"):
        gs.read_csv(tmp_path, has_header=False)
    (tmp_path / "b.csv").write_text("ts,w\n1,2\n")
    with pytest.raises(gs.IngestError, match=r"b\.csv has columns"):
        list(gs.read_csv(tmp_path).open())
    with pytest.raises(FileNotFoundError, match="no file matches"):
        gs.read_jsonl(tmp_path / "none*.jsonl")


def test_timestamps_as_text_or_epoch_numbers_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"ts": "2024-01-01T00:00:01.250", "v": 1}\n'
                                      '{"ts": "2024-01-01T00:00:02", "v": 2}\n')
    (tmp_path / "b.jsonl").write_text('{"ts": 1704067203500, "v": 3}\n')
    text = gs.read_jsonl(tmp_path / "a.jsonl")
    assert text.schema().field("ts").type == pa.timestamp("ms")  # text is read in ms
    epoch = gs.read_jsonl(tmp_path / "b.jsonl", schema_overrides={"ts": "timestamp[ms]"})
    got = [_read_all(s)[0]["ts"].cast(pa.int64()).to_pylist() for s in (text, epoch)]
    assert got == [[1704067201250, 1704067202000], [1704067203500]]
    # parquet files of other units are converted to the first file's unit
    pq.write_table(pa.table({"ts": pa.array([1_500_000], pa.timestamp("us"))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"ts": pa.array([2_000], pa.timestamp("ms"))}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"ts": pa.array([3], pa.timestamp("s"))}), tmp_path / "c.parquet")
    t, _ = _read_all(gs.read_parquet(tmp_path))
    assert t.schema.field("ts").type == pa.timestamp("us")
    assert t["ts"].cast(pa.int64()).to_pylist() == [1_500_000, 2_000_000, 3_000_000]


def test_strings_are_dictionary_codes_that_decode_back(tmp_path: Path) -> None:
    df = _records(3000, seed=9)
    _write_jsonl(tmp_path / "a.jsonl", df)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.read_jsonl(tmp_path, max_rows=100), event_time="ts")
    got = s.key_by("k").window(gs.Tumbling(100_000), name="w").agg(c=gs.count()).collect()
    assert dict(zip(got["k"].to_pylist(), got["c"].to_pylist(), strict=True)) == \
        df.groupby("k").size().to_dict()


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_arrow_ipc_reads_both_formats_and_resumes(tmp_path: Path, kind: str) -> None:
    df = _records(1000, seed=3)
    table = pa.Table.from_pandas(df, preserve_index=False)
    for i in range(2):
        path = tmp_path / f"p{i}.{'arrow' if kind == 'file' else 'arrows'}"
        opener = pa.ipc.new_file if kind == "file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as w:
            w.write_table(table, max_chunksize=300)
    src = gs.read_arrow_ipc(tmp_path, batch_rows=128)
    whole, batches = _read_all(src)
    assert whole.equals(pa.concat_tables([table, table]))
    assert all(b.data.num_rows <= 128 for b in batches)
    done = 0
    for b in batches:
        done += b.data.num_rows
        assert _read_all(src, b.offset)[0].equals(whole.slice(done))


def _follow(src: Source, got: list[SourceBatch], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        for b in src.open():
            got.append(b)
            if stop.is_set():
                return
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_rows(got: list[SourceBatch], n: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sum(b.data.num_rows for b in got)
        if rows >= n:
            return rows
        time.sleep(0.02)
    return sum(b.data.num_rows for b in got)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_follow_mode_picks_up_new_files_and_appended_lines(tmp_path: Path, fmt: str) -> None:
    schema = {"ts": "int64", "k": "string", "v": "float64", "n": "int64"}
    reader = gs.read_jsonl if fmt == "jsonl" else gs.read_csv
    src = reader(tmp_path, schema=schema, follow=True, max_rows=1000, max_delay="20ms",
                 poll_interval="10ms")
    assert not src.bounded
    got: list[SourceBatch] = []
    stop = threading.Event()
    thread = _follow(src, got, stop)
    time.sleep(0.1)
    a, b = _records(40, seed=1), _records(25, seed=2)
    # a file created after the start
    (_write_jsonl if fmt == "jsonl" else _write_csv)(tmp_path / f"a.{fmt}.tmp", a)
    (tmp_path / f"a.{fmt}.tmp").rename(tmp_path / f"a.{fmt}")
    assert _wait_rows(got, 40) == 40
    # lines appended to it, the last one in two writes: it counts once it is whole
    more = (b.to_csv(index=False, header=False) if fmt == "csv"
            else "".join(json.dumps(r) + "\n" for r in b.to_dict("records")))
    with open(tmp_path / f"a.{fmt}", "a") as f:
        f.write(more[:-10])
        f.flush()
        assert _wait_rows(got, 64) == 64  # 24 whole lines; the 25th is not complete yet
        time.sleep(0.1)
        assert sum(x.data.num_rows for x in got) == 64
        f.write(more[-10:])
    assert _wait_rows(got, 65) == 65
    stop.set()
    (tmp_path / f"b.{fmt}").write_text(more if fmt == "jsonl" else "ts,k,v,n\n" + more)
    thread.join(timeout=10)
    assert not thread.is_alive()
    # batches closed by max_delay at a few lines each, far below max_rows
    assert len(got) >= 2 and all(x.data.num_rows < 1000 for x in got)
    rows = pa.Table.from_batches([x.data for x in got])
    assert rows["n"].to_pylist()[:65] == a["n"].tolist() + b["n"].tolist()


def test_follow_mode_for_parquet_files_renamed_into_place(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "000.parquet")
    src = gs.read_parquet(tmp_path, follow=True, poll_interval="10ms")
    got: list[SourceBatch] = []
    stop = threading.Event()
    thread = _follow(src, got, stop)
    assert _wait_rows(got, 2) == 2
    stop.set()
    pq.write_table(pa.table({"x": [3]}), tmp_path / "001.parquet.tmp")
    (tmp_path / "001.parquet.tmp").rename(tmp_path / "001.parquet")
    thread.join(timeout=10)
    assert [v for b in got for v in b.data["x"].to_pylist()] == [1, 2, 3]


def test_csv_with_given_schema_reads_only_its_columns(tmp_path: Path) -> None:
    df = _records(500, seed=4)
    pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "a.csv")
    src = gs.read_csv(tmp_path / "a.csv", schema={"n": "int32", "ts": "int64"})
    t, _ = _read_all(src)
    assert t.schema.names == ["n", "ts"] and t.schema.field("n").type == pa.int32()
    assert t["n"].to_pylist() == df["n"].tolist()


def test_event_time_as_text_tells_how_to_read_it(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"ts": "yesterday", "v": 1}\n')
    p = gs.Pipeline(engine="cpu")
    with pytest.raises(gs.PlanError, match=r"has type string.*schema_overrides=\{'ts': "
                                           r"'timestamp\[ms\]'\}"):
        p.source(gs.read_jsonl(tmp_path), event_time="ts")
