"""One device pool: numba's EMM plugin over cupy's pool (gpustream.devicepool)."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream import devicepool
from gpustream.errors import BackendError
from gpustream.metrics import Metrics
from gpustream.probe import probe_gpu
from tests.conftest import cudasim_on


class _Block:
    """A fake cupy pool block: back in its pool when the last reference goes."""

    def __init__(self, pool: _Pool, ptr: int, size: int) -> None:
        self.pool, self.ptr, self.size = pool, ptr, size

    def __del__(self) -> None:
        del self.pool.in_use[self.ptr]
        self.pool.cached += self.size


class _Pool:
    def __init__(self) -> None:
        self.in_use: dict[int, int] = {}
        self.cached = 0
        self.next_ptr = 0x7F00_0000_0000

    def malloc(self, size: int) -> _Block:
        size = -(-size // 512) * 512  # cupy rounds to 512 bytes
        block = _Block(self, self.next_ptr, size)
        self.in_use[block.ptr] = size
        self.next_ptr += size
        return block

    def free_bytes(self) -> int:
        return self.cached


class _Context:
    """Stands in for numba's context object (the plugin only keeps a weak proxy of it)."""


@pytest.fixture
def manager() -> Any:
    if cudasim_on():
        pytest.skip("the simulator's numba.cuda has no EMM plugin classes; runs in the cpu step")
    pool = _Pool()
    cls = devicepool.cupy_numba_manager(pool=pool, mem_info=lambda: (1_000_000, 8_000_000))
    ctx = _Context()
    mgr = cls(context=ctx)
    mgr.initialize()
    mgr.test_pool, mgr.test_ctx = pool, ctx  # keep the context alive with the manager
    return mgr


def test_memalloc_takes_from_the_pool_and_numbas_finalizer_gives_it_back(manager: Any) -> None:
    pool = manager.test_pool
    mp = manager.memalloc(1000)
    assert pool.in_use == {mp.device_pointer_value: 1024}
    assert mp.size == 1000
    other = manager.memalloc(5000)
    assert len(pool.in_use) == 2
    del mp  # numba drops its MemoryPointer: the finalizer hands the block back
    gc.collect()
    assert list(pool.in_use) == [other.device_pointer_value]
    other.free()  # numba's explicit free runs the same finalizer
    assert pool.in_use == {}
    assert pool.cached == 1024 + 5120


def test_a_zero_byte_allocation_is_never_a_null_pointer(manager: Any) -> None:
    mp = manager.memalloc(0)
    assert mp.device_pointer_value
    assert len(manager.test_pool.in_use) == 1


def test_memory_info_counts_the_pools_cached_blocks_as_free(manager: Any) -> None:
    manager.memalloc(4096).free()
    info = manager.get_memory_info()
    assert (info.free, info.total) == (1_000_000 + 4096, 8_000_000)


def test_reset_returns_every_block_and_later_finalizers_are_harmless(manager: Any) -> None:
    held = [manager.memalloc(100) for _ in range(3)]
    manager.reset()
    assert manager.test_pool.in_use == {}
    for mp in held:
        mp.free()  # after a reset: nothing left to give back, and no error
    manager.reset()  # twice, or before any allocation: fine


def test_the_plugin_passes_numbas_version_check(manager: Any) -> None:
    cls = type(manager)
    # what numba.cuda.set_memory_manager does, without changing this process's manager
    assert cls(context=None).interface_version == 1
    from numba import cuda

    assert issubclass(cls, (cuda.HostOnlyCUDAMemoryManager, cuda.GetIpcHandleMixin))


def test_a_numba_context_made_before_the_pool_is_reported_not_hidden(
        manager: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from numba import cuda
    from numba.cuda.cudadrv import driver

    cls = type(manager)
    set_to: list[type] = []
    monkeypatch.setattr(cuda, "set_memory_manager", set_to.append)  # not this process's
    monkeypatch.setattr(driver.config, "CUDA_MEMORY_MANAGER", "default", raising=False)
    opened: list[Any] = []
    monkeypatch.setattr(type(driver.driver), "list_devices", lambda self: opened)
    assert devicepool._point_numba_at(cls) == (True, None)  # no numba context yet
    assert set_to == [cls]
    # numba made its context (with its own manager) before gpustream chose the pool
    opened += [SimpleNamespace(id=0, primary_context=SimpleNamespace(
        memory_manager=driver.NumbaCUDAMemoryManager(context=None)))]
    inside, why = devicepool._point_numba_at(cls)
    assert not inside
    assert why is not None and "already existed on GPU 0" in why and "use_one_pool()" in why
    assert why in caplog.text
    # a context made with the plugin is fine (a second pipeline in the same process)
    opened[0] = SimpleNamespace(id=0, primary_context=SimpleNamespace(memory_manager=manager))
    assert devicepool._point_numba_at(cls) == (True, None)


def test_a_memory_manager_the_user_set_for_numba_is_kept(
        manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from numba import cuda
    from numba.cuda.cudadrv import driver

    set_to: list[type] = []
    monkeypatch.setattr(cuda, "set_memory_manager", set_to.append)
    monkeypatch.setattr(driver.config, "CUDA_MEMORY_MANAGER", "rmm.allocators.numba",
                        raising=False)
    inside, why = devicepool._point_numba_at(type(manager))
    assert (inside, set_to) == (False, [])
    assert why == "NUMBA_CUDA_MEMORY_MANAGER=rmm.allocators.numba was set: numba keeps that plugin"


def test_the_pool_is_chosen_by_env_and_a_wrong_value_names_the_fix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devicepool.POOL_ENV, raising=False)
    assert devicepool.requested_pool() == "auto"
    monkeypatch.setenv(devicepool.POOL_ENV, "RMM ")
    assert devicepool.requested_pool() == "rmm"
    monkeypatch.setenv(devicepool.POOL_ENV, "arena")
    with pytest.raises(BackendError, match=r"GPUSTREAM_DEVICE_POOL='arena'.*auto, cupy, rmm, off"):
        devicepool.requested_pool()


def test_off_leaves_numba_and_cupy_alone() -> None:
    pool = devicepool._choose("off")
    assert (pool.kind, pool.numba_in_pool) == ("off", False)
    assert "keep their allocators" in pool.describe()


def test_asking_for_rmm_without_rmm_is_an_error_that_names_the_fix() -> None:
    if importlib.util.find_spec("rmm") is not None:
        pytest.skip("rmm is installed here: the cuda test covers it")
    with pytest.raises(BackendError, match=r"GPUSTREAM_DEVICE_POOL=rmm but rmm cannot be "
                       r"imported.*set GPUSTREAM_DEVICE_POOL=cupy"):
        devicepool._choose("rmm")


def test_the_live_view_shows_the_bytes_of_state_and_no_gpu_memory_on_cpu() -> None:
    m = Metrics("state", "cpu")
    p = gs.Pipeline("state", engine="cpu")
    table = pa.table({"ts": np.arange(1000) * 10, "k": np.arange(1000) % 7,
                      "v": np.ones(1000)})
    out: list[pa.RecordBatch] = []
    (p.source(gs.from_arrow(table, batch_rows=100), event_time="ts").key_by("k")
     .window(gs.Session(100_000), name="w").agg(s=gs.col("v").sum()).sink(gs.to_callback(out.append)))
    seen: list[tuple[int, str]] = []
    m.batch = _spy(m.batch, lambda: seen.append(  # type: ignore[method-assign]
        (m.gauges()["state_bytes"], dict(m.rows())["open windows"])))
    p.run(metrics=m)
    assert m.gpu_memory() is None
    assert "GPU memory" not in dict(m.rows())
    # mid-run, the 7 keys' open sessions hold state: its bytes are shown
    state, row = seen[-1]
    assert state > 0
    assert row == f"7 ({state / 1024:,.1f} KiB of state)"


def _spy(f: Any, after: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = f(*args, **kwargs)
        after()
        return result
    return wrapped


_CUDA_SCRIPT = textwrap.dedent("""
    import gc, json
    import numpy as np, cupy
    from numba import cuda
    from gpustream.backend import select_backend
    from gpustream import devicepool

    select_backend("cuda")  # chooses the pool before numba makes its context
    chosen = devicepool.current_pool()
    pool = cupy.get_default_memory_pool()
    sizes = []

    class Seen(cupy.cuda.MemoryHook):
        name = "seen"
        def malloc_postprocess(self, **kw):
            sizes.append(kw["size"])

    @cuda.jit
    def fill(x):
        i = cuda.grid(1)
        if i < x.size:
            x[i] = i

    before = pool.used_bytes()
    with Seen():
        a = cuda.device_array(1 << 20, np.float32)          # numba's own allocation
        after_alloc = pool.used_bytes()
        host = np.zeros(1 << 19, np.float64)
        fill[(host.size + 255) // 256, 256](host)          # the launch copies host over
    fill[(a.size + 255) // 256, 256](a)
    ok = bool(a.copy_to_host()[12345] == 12345) and bool(host[777] == 777)
    manager = type(cuda.current_context().memory_manager).__name__
    del a
    gc.collect()
    print(json.dumps({"kind": chosen.kind, "numba_in_pool": chosen.numba_in_pool,
                      "note": chosen.note, "manager": manager, "ok": ok,
                      "grew": after_alloc - before, "left": pool.used_bytes() - before,
                      "sizes": sizes}))
""")


@pytest.mark.cuda
def test_numba_arrays_and_launches_allocate_from_cupys_pool() -> None:
    probe = probe_gpu()
    if not probe.ok:
        pytest.skip(f"needs a working NVIDIA GPU: {probe.reason}")
    # a fresh process: numba's context must not exist before the pool is chosen
    env = {k: v for k, v in os.environ.items() if k != devicepool.POOL_ENV}
    done = subprocess.run([sys.executable, "-c", _CUDA_SCRIPT], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["ok"] and got["numba_in_pool"], got
    if got["kind"] == "rmm":
        assert got["manager"] == "RMMNumbaManager", got
        return
    assert got["manager"] == "CupyPoolNumbaManager", got
    assert got["grew"] >= 4 << 20, got               # device_array: 4 MiB from the pool;
    # the launch's copy of `host` (4 MiB) too:
    assert got["sizes"].count(4 << 20) >= 2, got     # both through cupy's malloc
    assert got["left"] == 0, got                      # freed arrays are back in the pool
