"""Choosing the execution backend: ``cpu``, ``cuda``, or ``cudasim`` (DESIGN.md section 4).

The choice is made once, when a pipeline is planned, for the whole pipeline, and it is
never silent: the chosen :class:`Backend` carries a one-line reason, and on fallback from
``auto`` to ``cpu`` the reason the GPU could not be used.

- ``cpu``: numpy arrays and ``numba.njit`` kernels.
- ``cuda``: cupy arrays and ``numba.cuda.jit`` kernels on an NVIDIA GPU, both allocating
  from one device pool (:mod:`gpustream.devicepool`, set up when ``cuda`` is selected).
- ``cudasim``: the cuda backend's code with numpy standing in for cupy, under numba's CUDA
  simulator (``NUMBA_ENABLE_CUDASIM=1``), so CI without a GPU runs every CUDA kernel.

``GPUSTREAM_ENGINE`` (``auto|cpu|cuda|cudasim``) overrides the engine a pipeline asks for.

Kernels run through the backend: :meth:`Backend.launch` takes a
:class:`~gpustream.kernels.registry.KernelPair` (a CPU twin and a CUDA kernel) and runs
the side this backend runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gpustream.errors import BackendError
from gpustream.probe import GpuInfo, probe_gpu

if TYPE_CHECKING:
    from gpustream.kernels.registry import KernelPair

__all__ = ["ENGINES", "Backend", "BackendName", "resolve_engine",
           "select_backend"]

BackendName = Literal["cpu", "cuda", "cudasim"]
ENGINES = ("auto", "cpu", "cuda", "cudasim")
ENV_VAR = "GPUSTREAM_ENGINE"


@dataclass(frozen=True)
class Backend:
    """The backend a pipeline runs on, and why.

    Parameters
    ----------
    name
        ``"cpu"``, ``"cuda"`` or ``"cudasim"``.
    requested
        The engine that was asked for (after ``GPUSTREAM_ENGINE``).
    reason
        One line saying why this backend runs.
    fallback
        Where ``auto`` fell back to ``cpu``: why the GPU could not be used.
    device
        The GPU, for ``cuda``.

    Examples
    --------
    >>> b = select_backend("cpu")
    >>> b.name, b.xp.__name__, b.is_device
    ('cpu', 'numpy', False)
    """

    name: BackendName
    requested: str
    reason: str
    fallback: str | None = None
    device: GpuInfo | None = None

    @property
    def xp(self) -> ModuleType:
        """The array namespace: ``cupy`` on ``cuda``, ``numpy`` on ``cpu`` and ``cudasim``."""
        if self.name == "cuda":
            import cupy

            return cupy
        return np

    @property
    def is_device(self) -> bool:
        """True for the backends that run CUDA kernels (``cuda`` and ``cudasim``)."""
        return self.name != "cpu"

    def to_device(self, array: np.ndarray) -> Any:
        """Copy a host array to where this backend computes (no copy on ``cpu``/``cudasim``).

        Examples
        --------
        >>> import numpy as np
        >>> a = np.arange(3)
        >>> select_backend("cpu").to_device(a) is a
        True
        """
        if self.name == "cuda":
            import cupy

            return cupy.asarray(array)
        return array

    def to_host(self, array: Any) -> np.ndarray:
        """Bring an array of this backend to a host numpy array (no copy when it is one).

        Examples
        --------
        >>> import numpy as np
        >>> select_backend("cpu").to_host(np.arange(2)).tolist()
        [0, 1]
        """
        if isinstance(array, np.ndarray):
            return array
        get = getattr(array, "get", None)
        if get is not None:  # cupy.ndarray
            return get()
        return np.asarray(array)

    def launch(self, kernel: KernelPair, n: int, *args: Any) -> Any:
        """Run ``kernel`` over ``n`` items with ``args``, on this backend.

        On ``cpu`` it calls the kernel's CPU twin with ``args`` and returns what the twin
        returns. On ``cuda`` and ``cudasim`` it launches the CUDA kernel over
        ``kernel.config(n)`` (``args`` as they are: cupy arrays on ``cuda``, numpy under
        the simulator) and returns None; with ``n == 0`` nothing is launched.

        Examples
        --------
        >>> import numpy as np
        >>> from gpustream.kernels.hashing import HASH_ROWS
        >>> keys = np.array([[7, 8, 7]], dtype=np.uint64)
        >>> out = np.zeros(3, dtype=np.uint64)
        >>> select_backend("cpu").launch(HASH_ROWS, 3, keys, out)
        >>> bool(out[0] == out[2]), bool(out[0] != out[1])
        (True, True)
        """
        if self.name == "cpu":
            if kernel.cpu is None:
                raise BackendError(
                    f"kernel {kernel.name} has no CPU twin: its wrapper must run the CPU "
                    "algorithm itself on the cpu backend, not launch it")
            return kernel.cpu(*args)
        if n > 0:
            kernel.cuda[kernel.config(n)](*args)
        return None

    def describe(self) -> str:
        """Backend name and reason, plus the fallback reason where there is one.

        Examples
        --------
        >>> select_backend("cpu").describe()
        "cpu (engine='cpu' was asked for)"
        """
        text = f"{self.name} ({self.reason})"
        if self.fallback:
            text += f"; GPU not used: {self.fallback}"
        return text


def resolve_engine(engine: str) -> tuple[str, str]:
    """The engine to use and where it came from, applying ``GPUSTREAM_ENGINE``.

    Examples
    --------
    >>> import os
    >>> os.environ.pop("GPUSTREAM_ENGINE", None) and None
    >>> resolve_engine("auto")
    ('auto', "engine='auto'")
    """
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        if env not in ENGINES:
            raise BackendError(
                f"{ENV_VAR}={env!r} is not an engine; set it to one of {', '.join(ENGINES)} "
                "or unset it"
            )
        source = f"{ENV_VAR}={env}"
        if env != engine:
            source += f" (overrides engine={engine!r})"
        return env, source
    if engine not in ENGINES:
        raise BackendError(
            f"engine={engine!r} is not an engine; use one of {', '.join(ENGINES[:3])}"
        )
    return engine, f"engine={engine!r}"


def _cuda_stack_problem() -> str | None:
    """Why the CUDA software stack (cupy, numba-cuda) cannot run, or None when it can.

    This is the guarded first allocation: it runs only after the driver probe found a GPU.
    When the stack works, numba is pointed at cupy's (or RMM's) pool here, before any launch.
    """
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc}); install the GPU extra: pip install 'gpustream[gpu]'"
    try:
        cupy.zeros(1, dtype=cupy.int64).sum().item()
    except Exception as exc:
        return f"the first GPU allocation through cupy failed: {exc!r}"
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba's CUDA target is missing ({exc}); pip install 'gpustream[gpu]'"
    if not cuda.is_available():
        return "numba.cuda.is_available() is False; check that numba-cuda matches the driver"
    from gpustream.devicepool import use_one_pool

    use_one_pool()  # one device pool for numba and cupy
    return None


def _cudasim_enabled() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return True
    import numba

    return bool(getattr(numba.config, "ENABLE_CUDASIM", 0))


def _quiet_small_grids() -> None:
    """Stop numba warning about launches of fewer than 128 blocks.

    A stream's batches are often small (a socket's few rows, a window's last events);
    a small grid is then right, not a mistake, and the warning would fire every batch.
    Implicit host-to-device copies still warn: those are mistakes on a hot path.
    """
    from numba.core import config as core_config

    core_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0  # type: ignore[attr-defined]
    try:
        from numba.cuda.core import config as cuda_config  # numba-cuda >= 0.2x
    except ImportError:  # pragma: no cover - older numba-cuda reads numba's own config
        return
    cuda_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


def select_backend(engine: str = "auto") -> Backend:
    """Decide which backend runs a pipeline.

    Parameters
    ----------
    engine
        ``"auto"`` (CUDA when a GPU works, else CPU, saying why), ``"cpu"``, ``"cuda"``
        (fails with :class:`~gpustream.errors.BackendError` where no GPU works) or
        ``"cudasim"``. ``GPUSTREAM_ENGINE`` overrides it.

    Examples
    --------
    >>> select_backend("cpu").name
    'cpu'
    >>> select_backend("warp-drive")
    Traceback (most recent call last):
    ...
    gpustream.errors.BackendError: engine='warp-drive' is not an engine; use one of auto, cpu, cuda
    """
    chosen, source = resolve_engine(engine)
    if chosen == "cpu":
        return Backend("cpu", chosen, f"{source} was asked for")
    if chosen == "cudasim":
        if not _cudasim_enabled():
            raise BackendError(
                f"{source} runs the cuda backend under numba's CUDA simulator, which must be "
                "switched on before numba loads: run with NUMBA_ENABLE_CUDASIM=1"
            )
        return Backend("cudasim", chosen, f"{source}: CUDA kernels under numba's simulator")
    probe = probe_gpu()
    problem = probe.reason if not probe.ok else _cuda_stack_problem()
    if problem is None:
        device = probe.devices[0]
        _quiet_small_grids()
        return Backend("cuda", chosen, f"{source}: {device.describe()}", device=device)
    if chosen == "cuda":
        raise BackendError(
            f"{source} needs a working NVIDIA GPU, but {problem}. Use engine='auto' or 'cpu' "
            "to run on the CPU"
        )
    return Backend("cpu", chosen, f"{source} and no usable GPU", fallback=problem)
