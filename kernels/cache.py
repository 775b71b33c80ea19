"""numba's on-disk cache for gpustream's kernels: compiled once per machine.

Every CPU kernel is ``numba.njit(..., cache=CACHE)`` and every CUDA kernel
``numba.cuda.jit(..., cache=...)`` (:mod:`~gpustream.kernels.registry`): numba's own
cache does the work, with its index per function (keyed by the signature, the target
CPU or compute capability, the function's bytecode and numba's version, and stamped with
the source file's hash). This module only tells numba *where*: a cache locator, put
first in numba's list, claims the functions defined in ``gpustream/kernels/`` and in the
generated loops' files, and places their cache in this build's folder of
:func:`~gpustream.kernels.cachedir.cache_dir` (one folder per hash of all kernel
sources, so that an edit of a helper in one file never reuses code compiled against the
old helper in another). Any other function numba caches is left to numba's locators.

The per-query loops (:mod:`~gpustream.kernels.fused_window`, ``fused_dense``,
``fused_emit``) are generated source text: :func:`generated_kernel` writes each text to
a file named by the hash of the text and imports it from there, so numba caches those
loops like any kernel, and a file never holds other text than its name says.

Where there is no writable cache folder, ``CACHE`` is False: every kernel is compiled
in memory, as numba does without a cache. Under numba's CUDA simulator CUDA kernels are
not cached (the simulator compiles nothing); the CPU kernels still are.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numba
from numba.core import caching
from numba.core.dispatcher import Dispatcher

from gpustream.kernels.cachedir import KERNELS_DIR, cache_dir

__all__ = ["CACHE", "cuda_cache", "generated_kernel", "index_files", "kernel_dispatchers"]

#: the cache folder's subfolder for the generated loops' source files
GENERATED = "generated"


@functools.cache
def _file_hash(path: str, mtime_ns: int, size: int) -> str:
    """The source stamp: a hash of the file's bytes (the stat values key the memo, so an
    edited file is hashed again)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Locator:
    """Where numba caches one of gpustream's functions (the CPU and CUDA locators)."""

    #: subfolder of the cache folder
    kind = "cpu"

    def __init__(self, py_func: Any, py_file: str, cache_path: Path) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._module = str(py_func.__module__)
        self._cache_path = str(cache_path)

    def ensure_cache_path(self) -> None:
        os.makedirs(self._cache_path, exist_ok=True)
        tempfile.TemporaryFile(dir=self._cache_path).close()

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        st = os.stat(self._py_file)
        return _file_hash(self._py_file, st.st_mtime_ns, st.st_size)

    def get_disambiguator(self) -> str:
        # a kernel file imported under another module name (``kernels.x`` through the
        # repository's symlink, as a doctest run by path does) gets files of its own:
        # its cached code names that module, which another process may not import
        if self._module.startswith(("gpustream.", "gpustream_")):
            return str(self._lineno)
        return f"{self._module}-{self._lineno}"

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> _Locator | None:
        """A locator for a function of ``gpustream.kernels`` or of a generated loop, or
        None (numba's next locator decides) for any other function."""
        root = cache_dir()
        if root is None:
            return None
        folder = Path(py_file).resolve().parent
        if folder not in (KERNELS_DIR, (root / GENERATED).resolve()):
            return None
        self = cls(py_func, py_file, root / cls.kind)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


_CpuLocator = type("_CpuLocator", (_Locator, caching._CacheLocator),
                   {"kind": "cpu", "__module__": __name__})


def _put_first(impl: Any, locator: type) -> None:
    """Put ``locator`` first among the locators of ``impl`` (a numba ``CacheImpl``), on
    that class only: numba's other caches keep their own list."""
    if locator not in impl._locator_classes:
        impl._locator_classes = [locator, *impl._locator_classes]


_put_first(caching.CompileResultCacheImpl, _CpuLocator)

#: whether the kernels are cached on disk (a writable cache folder was found)
CACHE: bool = cache_dir() is not None


def cuda_cache() -> bool:
    """Whether CUDA kernels are cached on disk: there is a cache folder and numba's CUDA
    target is real (not the simulator). Puts the CUDA locator first in numba-cuda's list.

    Examples
    --------
    >>> cuda_cache() in (True, False)
    True
    """
    if not CACHE or os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return False
    if getattr(numba.config, "ENABLE_CUDASIM", 0):
        return False
    try:
        from numba.cuda.dispatcher import CUDACacheImpl
    except ImportError:  # pragma: no cover - no CUDA target: nothing to cache
        return False
    base = next(c for c in CUDACacheImpl.__mro__ if "_locator_classes" in vars(c))
    locator_base = getattr(sys.modules[base.__module__], "_CacheLocator", object)
    _put_first(CUDACacheImpl, _cuda_locator(locator_base))
    return True


@functools.cache
def _cuda_locator(base: type) -> type:
    return type("_CudaLocator", (_Locator, base), {"kind": "cuda", "__module__": __name__})


#: the dispatchers :func:`generated_kernel` made in this process and still in use (weak:
#: the loops' own caches decide how long one lives)
_GENERATED_KERNELS: weakref.WeakSet[Any] = weakref.WeakSet()


def _module_from(path: Path, modname: str, source: str) -> ModuleType:
    """Import ``source`` as module ``modname`` from ``path``, writing the file first
    where it is missing or holds other text (written whole, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fresh = path.read_text(encoding="utf-8") == source
    except OSError:
        fresh = False
    if not fresh:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(source, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # numba imports it by name when it loads the cache
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[modname]
        raise
    return module


def generated_kernel(source: str, name: str, stem: str, **options: Any) -> Any:
    """``numba.njit(**options)`` of the function ``name`` that the module text ``source``
    (its imports included) defines, cached on disk like every kernel.

    With a cache folder the text goes to ``generated/<stem>_<hash of the text>.py``
    there and is imported from that file, so numba's cache (which needs a source file)
    keeps the compiled loop; without one it is executed and compiled in memory.

    Examples
    --------
    >>> k = generated_kernel("def twice(x):\\n    return 2 * x\\n", "twice", "doc")
    >>> k(21)
    42
    """
    root = cache_dir()
    func: Any = None
    if root is not None:
        digest = hashlib.sha256(source.encode()).hexdigest()[:24]
        modname = f"_gpustream_{stem}_{digest}"
        try:
            module = sys.modules.get(modname) or _module_from(
                root / GENERATED / f"{modname.lstrip('_')}.py", modname, source)
            func = getattr(module, name)
        except OSError:  # the folder stopped being writable: compile in memory
            func = None
    dispatcher = None
    if func is not None:
        try:
            dispatcher = numba.njit(cache=True, **options)(func)
        except RuntimeError:  # numba found no cache folder for it after all
            dispatcher = None
    if dispatcher is None:
        namespace: dict[str, Any] = {}
        exec(compile(source, f"<gpustream {stem}>", "exec"), namespace)
        dispatcher = numba.njit(cache=False, **options)(namespace[name])
    _GENERATED_KERNELS.add(dispatcher)
    return dispatcher


def kernel_dispatchers() -> list[Any]:
    """Every numba dispatcher of gpustream's kernels in this process: the CPU kernels of
    the loaded kernel modules, the generated loops, and the CUDA kernels created so far.

    Examples
    --------
    >>> import gpustream.kernels.hashing as hashing
    >>> any(d is hashing._hash_rows_cpu for d in kernel_dispatchers())
    True
    """
    from gpustream.kernels.registry import KERNELS

    found: dict[int, Any] = {}
    for modname, module in list(sys.modules.items()):
        if modname.startswith("gpustream.kernels.") and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, Dispatcher):
                    found[id(value)] = value
    for value in [*_GENERATED_KERNELS, *(k._dispatcher for k in KERNELS)]:
        if value is not None:
            found[id(value)] = value
    return list(found.values())


def index_files() -> list[str]:
    """The cache index files (numba's ``.nbi``) of the kernels that this process compiled
    or loaded from the cache, where they exist.

    Examples
    --------
    >>> all(f.endswith(".nbi") for f in index_files())
    True
    """
    files = []
    for d in kernel_dispatchers():
        if not getattr(d, "overloads", None):
            continue
        cache_file = getattr(getattr(d, "_cache", None), "_cache_file", None)
        path = cast(Any, getattr(cache_file, "_index_path", None))
        if path is not None and os.path.exists(path):
            files.append(str(path))
    return sorted(set(files))
