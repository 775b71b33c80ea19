"""Partitioned runs from the outside: per-partition metrics, the live view's partitions,
the spec's cluster:/parallelism: keys and the CLI's --cluster/--parallelism."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gpustream.cli import app
from gpustream.live import LiveView
from gpustream.metrics import Metrics
from gpustream.runtime.runner import RunStats
from gpustream.spec import check_spec
from tests.test_metrics import _scrape

JULY_2015 = 1_436_918_400  # epoch seconds

SPEC = """name: tiny
engine: cpu
source: {type: parquet, path: in, event_time: ts, watermark: 0}
steps:
  - key_by: k
  - window: {tumbling: 200}
  - agg: {n: count(), total: sum(v)}
sink: {type: parquet, path: OUT}
"""


def _by_partition(family: Any) -> dict[str, float]:
    return {s.labels["partition"]: s.value for s in family.samples
            if s.labels.get("pipeline") == "scaled"}


def _two_partitions() -> list[dict[str, Any]]:
    return [
        {"events_in": 600, "events_out": 7, "bad_records": 1, "late_events": 2,
         "state_bytes": 4096, "round_seconds": 0.25, "watermark": (JULY_2015 + 5) * 1000},
        {"events_in": 400, "events_out": 3, "bad_records": 0, "late_events": 5,
         "state_bytes": 1024, "round_seconds": 0.5, "watermark": None},
    ]


def test_prometheus_serves_each_partition_next_to_the_totals() -> None:
    m = Metrics("scaled", "cpu", wall_clock=lambda: JULY_2015 + 8.0)
    assert not [n for n in _scrape(m) if "partition" in n]  # one process: no such series
    m.batch(1000, 0.01, (JULY_2015 + 5) * 1000)
    m.events_out, m.bad_records = 10, 1
    m.set_partitions(_two_partitions())
    fams = _scrape(m)
    # the totals stay what the coordinator keeps
    assert fams["gpustream_events_in"].samples[0].value == 1000
    assert fams["gpustream_events_out"].samples[0].value == 10
    want = {"gpustream_partition_events_in": ("counter", {"0": 600, "1": 400}),
            "gpustream_partition_events_out": ("counter", {"0": 7, "1": 3}),
            "gpustream_partition_bad_records": ("counter", {"0": 1, "1": 0}),
            "gpustream_partition_late_events": ("counter", {"0": 2, "1": 5}),
            "gpustream_partition_state_bytes": ("gauge", {"0": 4096, "1": 1024}),
            "gpustream_partition_round_seconds": ("gauge", {"0": 0.25, "1": 0.5}),
            # partition 1 has no watermark yet: no sample rather than a made-up one
            "gpustream_partition_watermark_timestamp_seconds": ("gauge",
                                                                {"0": JULY_2015 + 5})}
    for name, (kind, values) in want.items():
        assert fams[name].type == kind, name
        assert fams[name].documentation.strip(), name
        assert _by_partition(fams[name]) == values, name
    # a later round replaces them (counts are totals since each partition opened)
    m.set_partitions([{**p, "events_in": p["events_in"] + 1} for p in _two_partitions()])
    assert _by_partition(_scrape(m)["gpustream_partition_events_in"]) == {"0": 601, "1": 401}


def test_set_partitions_keeps_a_copy_of_what_it_is_given() -> None:
    m = Metrics("scaled", "cpu")
    parts = _two_partitions()
    m.set_partitions(parts)
    parts[0]["events_in"] = -1  # the coordinator's dicts are not kept
    m.partitions()[1]["events_in"] = -1  # nor are a reader's copies
    assert [p["events_in"] for p in m.partitions()] == [600, 400]
    m.set_partitions([{"events_in": 5}])  # keys it is not given read as nothing yet
    assert m.partitions() == [{"events_in": 5, "events_out": 0, "bad_records": 0,
                               "late_events": 0, "state_bytes": 0, "round_seconds": 0,
                               "watermark": None}]


def test_the_live_view_shows_each_partition_under_the_totals() -> None:
    m = Metrics("scaled", "cpu", wall_clock=lambda: JULY_2015 + 8.0)
    m.batch(1000, 0.01, (JULY_2015 + 5) * 1000)
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    with LiveView(m, console):
        pass
    assert "partition" not in console.file.getvalue()  # type: ignore[attr-defined]
    m.set_partitions(_two_partitions())
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    with LiveView(m, console):
        pass
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.index("dead letters") < text.index("partition")  # under the totals
    rows = [ln.strip("│ ").split() for ln in text.splitlines()]
    assert ["partition", "events", "in", "rows", "out", "watermark", "state"] in rows
    assert ["0", "600", "7", "3.0", "s", "behind", "4.0", "KiB"] in rows
    assert ["1", "400", "3", "-", "1.0", "KiB"] in rows
    # the log line (stdout not a terminal) says the same
    log = Console(file=io.StringIO(), width=120, force_terminal=False)
    with LiveView(m, log, interval_s=60):
        pass
    line: str = log.file.getvalue()  # type: ignore[attr-defined]
    assert ("; partitions 0: 600 in, 7 out, watermark 3.0 s behind, state 4.0 KiB | "
            "1: 400 in, 3 out, watermark -, state 1.0 KiB") in line


def _spec(tmp_path: Path, extra: str = "", out: str = "out", name: str = "spec") -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(SPEC.replace("OUT", out) + extra)
    return f


def _inputs(tmp_path: Path) -> None:
    """Two Parquet files, the second's event times after the first's (so the result
    does not depend on which order, or which partition, reads them)."""
    (tmp_path / "in").mkdir()
    for f in range(2):
        n = 50
        pq.write_table(pa.table({"ts": [f * 1000 + i * 20 for i in range(n)],
                                 "k": [f"k{(i * 7 + f) % 5}" for i in range(n)],
                                 "v": [float(i + f) for i in range(n)]}),
                       tmp_path / "in" / f"part-{f}.parquet")


@pytest.mark.parametrize(("extra", "field", "message"), [
    ("parallelism: 0\n", "parallelism", "greater than or equal to 1 (got 0)"),
    ("parallelism: x\n", "parallelism", "valid integer (got 'x')"),
    ("parallelism: true\n", "parallelism", "valid integer (got True)"),
    ("cluster: 2\n", "cluster", "valid string (got 2)"),
    ("cluster: ''\n", "cluster", "at least 1 character"),
    ("clustre: local:2\n", "clustre", "unknown field; did you mean 'cluster'?"),
])
def test_spec_refuses_a_bad_cluster_or_parallelism_naming_the_field(
        tmp_path: Path, extra: str, field: str, message: str) -> None:
    _inputs(tmp_path)
    checked = check_spec(_spec(tmp_path, extra))
    assert len(checked.errors) == 1, checked.errors
    assert f"spec.yaml:9: {field}: " in checked.errors[0]  # the line and the field
    assert message in checked.errors[0]


def test_spec_keys_are_what_the_run_gets_and_the_flags_override_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpustream as gs

    _inputs(tmp_path)
    calls: list[dict[str, Any]] = []

    def fake_run(self: Any, **kwargs: Any) -> RunStats:
        calls.append(kwargs)
        return RunStats(self.name, self.backend.name)

    monkeypatch.setattr(gs.Pipeline, "run", fake_run)
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "info")  # the CLI keeps a user's choice
    runner = CliRunner()
    plain = _spec(tmp_path)
    assert runner.invoke(app, ["run", str(plain), "--no-live"]).exit_code == 0
    assert "cluster" not in calls[-1] and "parallelism" not in calls[-1]  # one process
    scaled = _spec(tmp_path, "cluster: local:2\nparallelism: 2\n", name="scaled")
    checked = check_spec(scaled)
    assert (checked.errors, checked.cluster, checked.parallelism) == ([], "local:2", 2)
    assert runner.invoke(app, ["run", str(scaled), "--no-live"]).exit_code == 0
    assert (calls[-1]["cluster"], calls[-1]["parallelism"]) == ("local:2", 2)
    result = runner.invoke(app, ["run", str(scaled), "--no-live", "--parallelism", "3",
                                 "--cluster", "dask://sched:8786"])
    assert result.exit_code == 0, result.output
    assert (calls[-1]["cluster"], calls[-1]["parallelism"]) == ("dask://sched:8786", 3)
    assert runner.invoke(app, ["run", str(plain), "--no-live", "--parallelism", "2"]
                         ).exit_code == 0
    assert (calls[-1]["cluster"], calls[-1]["parallelism"]) == (None, 2)
    bad = runner.invoke(app, ["run", str(plain), "--parallelism", "0"])
    assert bad.exit_code == 2 and "--parallelism" in bad.output
    assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "info"


def test_explain_prints_the_partitioning(tmp_path: Path) -> None:
    _inputs(tmp_path)
    runner = CliRunner()
    plain = _spec(tmp_path)
    out = runner.invoke(app, ["explain", str(plain), "--parallelism", "2"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # rich wraps long lines
    assert "partitioning: partitions: 2, each reading its share of source 'source'" in text
    assert "repartitioned by hash(k) % 2 before step 1" in text
    assert "watermark of a partition: the smallest of the 2 shares' watermarks" in text
    assert "partitioning:" not in runner.invoke(app, ["explain", str(plain)]).output
    # the spec's parallelism:, and the flag over it
    scaled = _spec(tmp_path, "parallelism: 3\n", name="scaled")
    assert "partitions: 3," in runner.invoke(app, ["explain", str(scaled)]).output
    assert "partitions: 4," in runner.invoke(app, ["explain", str(scaled),
                                                   "--parallelism", "4"]).output


def test_run_on_a_local_cluster_writes_the_rows_of_a_run_in_one_process(
        tmp_path: Path) -> None:
    _inputs(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpustream.cli", "run", *args,
                               "--no-live"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    one = cli(str(_spec(tmp_path, out="one", name="one")))
    assert one.returncode == 0, one.stderr
    many = cli(str(_spec(tmp_path, out="many", name="many")), "--cluster", "local:2",
               "--parallelism", "2", "--checkpoint-dir", str(tmp_path / "ck"))
    assert many.returncode == 0, many.stdout + many.stderr
    assert "100 events in" in many.stdout and "50 rows out" in many.stdout
    assert "INFO" not in many.stderr and "Starting established connection" not in many.stderr
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "ck").iterdir()) == [
        "partition", "partition"]  # it did run as two partitions
    order = [("k", "ascending"), ("window_start", "ascending")]
    got = pq.read_table(tmp_path / "many").sort_by(order)
    want = pq.read_table(tmp_path / "one").sort_by(order)
    assert want.num_rows == 50
    assert got.equals(want)
