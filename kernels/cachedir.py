"""Where gpustream's compiled kernels are cached on disk, and the key that keeps them fresh.

The cache lives in one folder per machine and user:

1. ``$GPUSTREAM_CACHE_DIR`` when set;
2. else ``$NUMBA_CACHE_DIR/gpustream`` when numba's own cache folder is set;
3. else ``$XDG_CACHE_HOME/gpustream``, else ``~/.cache/gpustream``.

Inside it, everything sits under one folder per :func:`source_key`: a hash of every
kernel module's source (``gpustream/kernels/*.py``) and of the numba, llvmlite, numpy and
Python versions. numba's own index already checks the stamp of the file a kernel is
defined in; the key also covers the helpers a kernel inlines from *other* files (an edit
of :func:`~gpustream.kernels.windows.window_start` changes the loops of
:mod:`~gpustream.kernels.fused_window` that call it), so no edit of a kernel ever reuses
stale machine code. A folder that cannot be created or written is not used: kernels are
then compiled in memory, as without a cache.

This module imports neither numba nor cupy (``gpustream.compilecache`` reads it);
:func:`source_key` reads the versions of numba and llvmlite, so it loads numba when it
is first called.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV_VAR", "KERNELS_DIR", "cache_dir", "cache_root", "source_key"]

#: the environment variable that names the cache folder
ENV_VAR = "GPUSTREAM_CACHE_DIR"

#: the folder of gpustream's kernel modules (symlinks resolved)
KERNELS_DIR = Path(__file__).resolve().parent


def cache_root(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder named by the environment (it may not exist yet), or None where no
    home folder can be found.

    Examples
    --------
    >>> cache_root({"GPUSTREAM_CACHE_DIR": "/srv/cache"}).as_posix()
    '/srv/cache'
    >>> cache_root({"NUMBA_CACHE_DIR": "/tmp/nb"}).as_posix()
    '/tmp/nb/gpustream'
    >>> cache_root({"XDG_CACHE_HOME": "/home/u/.cache"}).as_posix()
    '/home/u/.cache/gpustream'
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):  # resolved: a relative folder means the one it names now
        return Path(env[ENV_VAR]).expanduser().resolve()
    if env.get("NUMBA_CACHE_DIR"):
        return Path(env["NUMBA_CACHE_DIR"]).expanduser().resolve() / "gpustream"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser().resolve() / "gpustream"
    try:
        return Path.home() / ".cache" / "gpustream"
    except (RuntimeError, KeyError):  # no HOME and no password entry
        return None


def source_key() -> str:
    """A hash of every kernel module's source and of the compiler's versions: the name of
    the cache's folder for this build of the kernels (read once per process).

    Examples
    --------
    >>> key = source_key()
    >>> len(key), key == source_key()
    (16, True)
    """
    return _source_key(KERNELS_DIR)


@functools.cache
def _source_key(folder: Path) -> str:
    """:func:`source_key` of the ``*.py`` files in ``folder``."""
    import llvmlite
    import numba
    import numpy

    h = hashlib.sha256()
    try:  # the CUDA compiler (its version, read without importing it)
        cuda = importlib.metadata.version("numba-cuda")
    except importlib.metadata.PackageNotFoundError:
        cuda = "none"
    for name, version in (("python", sys.version), ("numba", numba.__version__),
                          ("llvmlite", llvmlite.__version__), ("numpy", numpy.__version__),
                          ("numba-cuda", cuda)):
        h.update(f"{name}={version}\n".encode())
    for path in sorted(folder.glob("*.py")):
        h.update(f"{path.name}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def _usable(path: Path) -> bool:
    """Whether ``path`` is (or can be made) a folder this process can write in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """This build's cache folder (created) under :func:`cache_root`, or None where there
    is none that this process can write: the kernels are then compiled in memory.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     d = cache_dir({"GPUSTREAM_CACHE_DIR": tmp})
    ...     Path(tmp, "a-file").touch()
    ...     blocked = cache_dir({"GPUSTREAM_CACHE_DIR": f"{tmp}/a-file/cache"})
    ...     d.parent == Path(tmp), d.is_dir(), d.name.endswith(source_key()), blocked
    (True, True, True, None)
    """
    root = cache_root(environ)
    if root is None:
        return None
    import numba

    path = root / f"numba-{numba.__version__}-{source_key()}"
    return path if _usable(path) else None
