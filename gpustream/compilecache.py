"""Kernels compiled once per machine: the on-disk cache of compiled kernels.

(Stub: to be filled in by the compile-cache work of issue 18.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile_notice"]


def compile_notice(plan: Any) -> str | None:
    """What the live view says while the run compiles its kernels, or None when the
    kernels this plan needs are already compiled on this machine.

    Examples
    --------
    >>> compile_notice(None) is None
    True
    """
    return None
