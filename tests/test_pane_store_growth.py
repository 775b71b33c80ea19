"""The CPU pane store's key table when keys come and go (a review of issue 17's Nexmark
runs found a hang): windows of ~1900 keys each, new keys every window, so freed keys
pile up as tombstones until the table is short of room while the live keys alone would
not make it grow. It must drop the tombstones (a rebuild at the same size), not loop."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa

import gpustream as gs

SCRIPT = """
import numpy as np, pyarrow as pa, gpustream as gs
per, wins = 1900, 12
k = np.arange(per * wins)
ts = (k // per) * 1000 + (k % per) * 999 // per
t = pa.table({"k": k, "ts": ts.astype(np.int64)})
p = gs.Pipeline(engine="cpu")
s = p.source(gs.from_arrow(t, batch_rows=500), event_time="ts")
out = s.key_by("k").window(gs.Tumbling(1000)).agg(n=gs.count()).collect()
print(out.num_rows, sum(out["n"].to_pylist()))
"""


def test_keys_that_come_and_go_do_not_stall_the_cpu_pane_store() -> None:
    # in a child process: a stall must fail the test, not hang the suite
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["22800", "22800"]


def test_the_store_stays_small_when_keys_come_and_go() -> None:
    from gpustream.state.store_cpu_panes import CpuPaneStore

    per, wins = 1900, 30
    k = np.arange(per * wins)
    t = pa.table({"k": k, "ts": ((k // per) * 1000 + (k % per) * 999 // per).astype(np.int64)})
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(t, batch_rows=2000), event_time="ts")
    w = s.key_by("k").window(gs.Tumbling(1000), name="w").agg(n=gs.count())
    rows: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(rows.append))
    stores: list[CpuPaneStore] = []
    real = CpuPaneStore.fold

    def spy(self: CpuPaneStore, ev: object) -> object:
        stores.append(self)
        return real(self, ev)  # type: ignore[arg-type]

    CpuPaneStore.fold = spy  # type: ignore[assignment,method-assign]
    try:
        p.run()
    finally:
        CpuPaneStore.fold = real  # type: ignore[method-assign]
    assert sum(b.num_rows for b in rows) == per * wins
    capacity = max(sh.pages.capacity for sh in stores[-1].shards)
    assert capacity <= 8192  # two windows' keys at most, not every key seen
