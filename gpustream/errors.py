"""Exceptions raised by gpustream.

Every error says what was wrong, where (step, column, spec field) and how to fix it.
"""

from __future__ import annotations

__all__ = ["BackendError", "GpustreamError", "PlanError"]


class GpustreamError(Exception):
    """Base class of every error gpustream raises on purpose."""


class PlanError(GpustreamError, ValueError):
    """A pipeline that cannot run as written, found before anything runs.

    Examples
    --------
    >>> raise PlanError("step 2 (filter): unknown column 'prise'")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 2 (filter): unknown column 'prise'
    """


class BackendError(GpustreamError, RuntimeError):
    """The requested execution backend cannot run on this machine."""
