"""Kernels compiled once per machine: what the live view says about the on-disk cache.

numba caches every compiled kernel on disk (:mod:`gpustream.kernels.cache`, in the
folder of :func:`gpustream.kernels.cachedir.cache_dir`). A first run of a query
compiles its kernels, a few seconds; later runs load them. :func:`compile_notice` tells
the two apart for the live view, cheaply and honestly: a run that compiled a plan's
kernels leaves, when its process exits, a marker for the plan's fingerprint that lists
the cache index files of the kernels the process used; the notice is None only while
that marker and every file it lists are there (and always for a plan this process has
already run). An edit of any kernel source moves the cache to a new folder, where no
marker is, so the next run says it compiles, and it does.

Importing this module loads neither numba nor cupy.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["NOTICE", "compile_notice", "plan_fingerprint"]

#: what the live view shows while a query's kernels compile
NOTICE = "compiling kernels for this query (first run only)"
#: the same where there is no writable cache folder
NOTICE_NO_CACHE = "compiling kernels for this query (no writable cache folder: every run)"

#: plans whose kernels this process has compiled or loaded (fingerprint -> marker file)
_RAN: dict[str, Path | None] = {}


def _walk(plan: Any) -> list[Any]:
    """The physical nodes of ``plan`` from its sources, each once, in a fixed order."""
    seen: set[int] = set()
    order: list[Any] = []
    todo = list(reversed(plan.sources))
    while todo:
        pn = todo.pop()
        if id(pn) in seen:
            continue
        seen.add(id(pn))
        order.append(pn)
        nxt = list(pn.children) + [c for key in sorted(pn.side) for c in pn.side[key]]
        todo.extend(reversed(nxt))
    return order


def plan_fingerprint(plan: Any) -> str:
    """A hash of what decides which kernels a physical plan compiles: the backend, and
    per operator its class, its output column types and, for windows, the window kind,
    keys and aggregations (not the sources' paths, names or sizes).

    Examples
    --------
    >>> import gpustream as gs
    >>> from gpustream.plan.physical import build_physical
    >>> def plan(agg):
    ...     p = gs.Pipeline(engine="cpu")
    ...     s = p.source(gs.from_arrow({"ts": [1, 2], "k": [1, 1], "v": [1.0, 2.0]}),
    ...                  event_time="ts")
    ...     s.key_by("k").window(gs.Tumbling("1s"), name="w").agg(x=agg).sink(gs.to_callback(print))
    ...     return build_physical(p._sinks, p.backend)
    >>> a = plan(gs.col("v").sum())
    >>> plan_fingerprint(a) == plan_fingerprint(plan(gs.col("v").sum()))
    True
    >>> plan_fingerprint(a) == plan_fingerprint(plan(gs.col("v").max()))
    False
    """
    from gpustream.plan import SourceNode, WindowAggNode

    h = hashlib.sha256(f"backend={plan.backend.name}\n".encode())
    for pn in _walk(plan):
        op = type(pn.op)
        types = ",".join(str(f.type) for f in pn.schema)
        line = f"{op.__module__}.{op.__qualname__}|{pn.node.op}|{types}"
        node = pn.node
        if isinstance(node, SourceNode):
            line += f"|event_time={node.event_time is not None}"
        elif isinstance(node, WindowAggNode):
            aggs = ",".join(repr(a) for _, a in node.aggs)
            line += (f"|{type(node.assigner).__name__}|keys={len(node.keys)}"
                     f"|lateness={node.allowed_lateness_ms > 0}|{aggs}")
        h.update(line.encode() + b"\n")
    return h.hexdigest()[:24]


def _marker(fingerprint: str) -> Path | None:
    from gpustream.kernels.cachedir import cache_dir

    root = cache_dir()
    return None if root is None else root / "plans" / f"{fingerprint}.json"


def _cached(marker: Path) -> bool:
    """Whether the marker is there and every cache index file it lists is too."""
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["index_files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(files, list) and all(os.path.exists(f) for f in files)


def _write_markers() -> None:
    """At exit: a marker for every plan this process ran, listing the index files of
    the kernels the process compiled or loaded (only where they are on disk)."""
    cache = sys.modules.get("gpustream.kernels.cache")
    if cache is None:
        return
    files = cache.index_files()
    if not files:
        return
    text = json.dumps({"index_files": files}, indent=1)
    for marker in _RAN.values():
        if marker is None:
            continue
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, marker)
        except OSError:
            pass


def compile_notice(plan: Any) -> str | None:
    """What the live view says while the run compiles its kernels, or None when the
    kernels this plan needs are already compiled on this machine.

    A plan this machine has not run (or whose kernels changed since) gets the notice;
    once a process has run it, the same process and later ones get None.

    Examples
    --------
    >>> import gpustream as gs
    >>> from gpustream.metrics import Metrics
    >>> from gpustream.plan.physical import build_physical
    >>> p = gs.Pipeline(engine="cpu")
    >>> s = p.source(gs.from_arrow({"ts": [1], "k": [7]}), event_time="ts")
    >>> _ = s.key_by("k").window(gs.Session("9s"), name="doc").agg(n=gs.count()).sink(
    ...     gs.to_callback(lambda rb: None))
    >>> m = Metrics("doc", "cpu")
    >>> stats = p.run(metrics=m)  # the runtime asked (NOTICE on this machine's first run)
    >>> compile_notice(build_physical(p._sinks, p.backend)) is None  # compiled by now
    True
    >>> compile_notice(None) is None
    True
    """
    if plan is None:
        return None
    fingerprint = plan_fingerprint(plan)
    if fingerprint in _RAN:  # run before in this process: its kernels are in memory
        return None
    if not _RAN:
        atexit.register(_write_markers)
    marker = _marker(fingerprint)
    _RAN[fingerprint] = marker
    if marker is None:
        return NOTICE_NO_CACHE
    return None if _cached(marker) else NOTICE
