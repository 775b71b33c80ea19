"""A hostile user's test: ``gpustream run`` killed with SIGKILL at random moments (while
it processes and while it writes a checkpoint) and restarted on the same checkpoint
folder, or stopped with SIGTERM and restarted, ends with exactly the output of one
uninterrupted run: no row lost, none doubled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROWS = 60_000

SCENARIOS: dict[str, dict[str, str]] = {
    "tumbling into a parquet folder": {
        "steps": "  - key_by: auction\n  - window: {tumbling: 10s}\n"
                 "  - agg: {n: count(), total: sum(price), hi: max(price)}\n",
        "sink": "{type: parquet, path: out, rows_per_file: 4000}",
    },
    "sessions into one jsonl file": {
        "steps": "  - key_by: bidder\n  - window: {session: 3s}\n"
                 "  - agg: {n: count(), total: sum(price)}\n",
        "sink": "{type: jsonl, path: out.jsonl}",
    },
    "window join into a parquet folder": {
        "steps": "  - window_join:\n      other: {type: parquet, path: other, event_time: ts,"
                 " watermark: 500ms, max_rows: 1000}\n      on: auction\n"
                 "      window: {tumbling: 2s}\n",
        "sink": "{type: parquet, path: out, rows_per_file: 20000}",
    },
    "lookup join with a changelog into a parquet folder": {
        "tables": "tables:\n  cards:\n    type: parquet\n    path: cards.parquet\n"
                  "    key: auction\n    changelog: {type: jsonl, path: updates.jsonl,"
                  " max_rows: 50}\n",
        "steps": "  - join_table: {table: cards, on: auction, how: left}\n",
        "sink": "{type: parquet, path: out, rows_per_file: 20000}",
    },
}


def _data(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 600_000, ROWS)) + rng.integers(0, 300, ROWS)
    table = pa.table({"id": np.arange(ROWS), "ts": ts, "auction": rng.integers(0, 400, ROWS),
                      "bidder": rng.integers(0, 3_000, ROWS),
                      "price": rng.integers(1, 1_000, ROWS)})
    (folder / "in").mkdir()
    for i in range(4):
        pq.write_table(table.slice(i * ROWS // 4, ROWS // 4), folder / "in" / f"{i}.parquet")
    n = ROWS // 4  # the window join's other stream
    other = pa.table({"ts": np.sort(rng.integers(0, 600_000, n)), "auction":
                      rng.integers(0, 400, n), "ask": rng.integers(1, 1_000, n)})
    (folder / "other").mkdir()
    pq.write_table(other, folder / "other" / "0.parquet")
    # the lookup join's table (limit 0 for every auction) and its changelog (versions 1..)
    pq.write_table(pa.table({"auction": np.arange(400), "limit": np.zeros(400, np.int64)}),
                   folder / "cards.parquet")
    (folder / "updates.jsonl").write_text("".join(
        json.dumps({"auction": int(a), "limit": v + 1}) + "\n"
        for v, a in enumerate(rng.integers(0, 400, 2_000))))


def _versions(folder: Path) -> dict[int, set[int]]:
    """The limits each auction's card had at some moment (what a lookup may have seen)."""
    seen = {a: {0} for a in range(400)}
    for line in (folder / "updates.jsonl").read_text().splitlines():
        u = json.loads(line)
        seen[u["auction"]].add(u["limit"])
    return seen


def _spec(folder: Path, scenario: str, checkpoint: bool) -> Path:
    s = SCENARIOS[scenario]
    path = folder / ("p.yaml" if checkpoint else "reference.yaml")
    path.write_text(
        "name: crash\nengine: cpu\n"
        "source: {type: parquet, path: in, event_time: ts, watermark: 500ms, max_rows: 1000}\n"
        + s.get("tables", "")
        + f"steps:\n{s['steps']}"
        f"sink: {s['sink']}\n"
        + ("checkpoint: {dir: ck, every_batches: 5}\n" if checkpoint else ""))
    return path


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    env["GPUSTREAM_CACHE_DIR"] = str(cache)  # compiled once, loaded by every restart
    return env


def _cmd(spec: Path) -> list[str]:
    return [sys.executable, "-m", "gpustream.cli", "run", str(spec), "--no-live"]


def _output(folder: Path) -> Counter[tuple[Any, ...]]:
    if (folder / "out.jsonl").exists():
        rows = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    elif (folder / "out").is_dir():
        rows = pq.read_table(folder / "out").to_pylist()  # skips hidden in-progress files
    else:
        rows = []
    return Counter(tuple(sorted((k, str(v)) for k, v in r.items())) for r in rows)


def _checkpoints(ck: Path) -> set[str]:
    return {p.name for p in ck.glob("ckpt-*") if not p.name.endswith(".tmp")} if ck.is_dir() \
        else set()


def _kill_at_a_checkpoint_write(proc: subprocess.Popen[str], ck: Path, limit: float) -> str:
    """SIGKILL as soon as a checkpoint is being written (its temporary folder exists)."""
    deadline = time.monotonic() + limit
    left = {p.name for p in ck.glob("*.tmp")}  # by an earlier kill: not this run's
    while time.monotonic() < deadline and proc.poll() is None:
        if ck.is_dir() and any(p.name.endswith(".tmp") and p.name not in left
                               for p in ck.iterdir()):
            proc.kill()
            return "during a checkpoint write"
        time.sleep(0.0005)
    proc.kill()
    return "at the time limit"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkill_at_random_moments_then_restart_gives_the_uninterrupted_output(
        tmp_path: Path, scenario: str) -> None:
    _data(tmp_path, seed=11)
    env = _env(tmp_path / "cache")
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("in", "other", "cards.parquet", "updates.jsonl"):
        os.symlink(tmp_path / name, reference / name)
    start = time.monotonic()
    done = subprocess.run(_cmd(_spec(reference, scenario, checkpoint=False)), cwd=reference,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = time.monotonic() - start
    want = _output(reference)
    assert sum(want.values()) > 1_000

    spec = _spec(tmp_path, scenario, checkpoint=True)
    rng = random.Random(scenario)
    killed = []
    for attempt in range(10):
        proc = subprocess.Popen(_cmd(spec), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if attempt % 3 == 2:
            killed.append(_kill_at_a_checkpoint_write(proc, tmp_path / "ck", whole * 2))
        else:
            time.sleep(rng.uniform(0.2, whole))
            proc.kill()
            killed.append("at a random moment")
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
    assert "during a checkpoint write" in killed
    assert (tmp_path / "ck").is_dir()  # some runs got as far as a checkpoint
    final = subprocess.run(_cmd(spec), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert "resumed from checkpoint" in final.stdout
    got = _output(tmp_path)
    if "lookup" in scenario:
        # which version of a card a row meets depends on how the stream and the changelog
        # interleave: each input row comes out once, with a version its card had
        rows = pq.read_table(tmp_path / "out").to_pylist()
        ids = Counter(r["id"] for r in rows)
        assert len(ids) == ROWS and max(ids.values()) == 1, (
            f"{ROWS - len(ids)} rows missing, {sum(ids.values()) - len(ids)} doubled; "
            f"kills: {killed}")
        versions = _versions(tmp_path)
        assert all(r["limit"] in versions[r["auction"]] for r in rows)
        return
    assert got == want, (f"{sum((want - got).values())} rows missing, "
                         f"{sum((got - want).values())} rows extra; kills: {killed}")


def test_sigterm_takes_a_final_checkpoint_and_a_restart_finishes_exactly(
        tmp_path: Path) -> None:
    scenario = "tumbling into a parquet folder"
    _data(tmp_path, seed=12)
    env = _env(tmp_path / "cache")
    reference = tmp_path / "reference"
    reference.mkdir()
    os.symlink(tmp_path / "in", reference / "in")
    done = subprocess.run(_cmd(_spec(reference, scenario, checkpoint=False)), cwd=reference,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    want = _output(reference)
    spec = _spec(tmp_path, scenario, checkpoint=True)
    stopped = 0
    for _ in range(3):
        proc = subprocess.Popen(_cmd(spec), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        before = _checkpoints(tmp_path / "ck")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None \
                and _checkpoints(tmp_path / "ck") <= before:
            time.sleep(0.01)  # it is processing: it took a checkpoint of its own
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished before the signal landed
            break
        assert proc.returncode == 143, err
        assert "stopped by SIGTERM" in out
        # a graceful stop commits everything it read: no file left in progress
        assert not [f for f in (tmp_path / "out").iterdir() if f.name.endswith(".inprogress")]
        stopped += 1
    assert stopped >= 1
    final = subprocess.run(_cmd(spec), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert _output(tmp_path) == want
