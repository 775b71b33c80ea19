"""YAML pipeline specs: parse, validate, build a ``gs.Pipeline``.

``yaml_spec``: the pydantic models of a spec and the builder; expressions in a spec
(``"price > 100"``, ``"sum(v)"``) are parsed by :mod:`gpustream.expr.text`, which the
expression package owns.

Examples
--------
>>> from gpustream.spec import SpecError
>>> from gpustream.errors import PlanError
>>> issubclass(SpecError, PlanError)
True
"""

from gpustream.spec.yaml_spec import (
    MAX_SPEC_BYTES,
    MAX_YAML_DEPTH,
    Spec,
    SpecCheck,
    SpecError,
    build_pipeline,
    check_spec,
    checkpointing_from_spec,
    load_spec,
    pipeline_from_spec,
)

__all__ = [
    "MAX_SPEC_BYTES",
    "MAX_YAML_DEPTH",
    "Spec",
    "SpecCheck",
    "SpecError",
    "build_pipeline",
    "check_spec",
    "checkpointing_from_spec",
    "load_spec",
    "pipeline_from_spec",
]
