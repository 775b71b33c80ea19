"""Exceptions raised by gpustream.

Every error says what was wrong, where (step, column, spec field) and how to fix it.
"""

from __future__ import annotations

__all__ = ["BackendError", "GpustreamError", "IngestError", "MapBatchesError", "PlanError"]


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


class IngestError(GpustreamError, ValueError):
    """A source that cannot be read: a missing file, a wrong schema, or a file whose
    records are mostly not in the format given (over the source's ``max_bad_fraction``).

    Examples
    --------
    >>> raise IngestError("read_csv: data.bin: 98 of 100 records do not parse as CSV")
    Traceback (most recent call last):
    ...
    gpustream.errors.IngestError: read_csv: data.bin: 98 of 100 records do not parse as CSV
    """


class MapBatchesError(GpustreamError, RuntimeError):
    """A ``map_batches`` function raised, or returned a batch that is not what its step
    declared (the message names the step)."""
