"""The operator contract (gpustream/operators/base.py): the runtime drives every operator
through the methods of ``Operator`` only, and every operator implements them alike."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
import gpustream.operators
from gpustream.batch import Batch
from gpustream.operators.base import (
    WATERMARK_END,
    Operator,
    OperatorCounters,
    TwoInputOperator,
)
from gpustream.watermark import NO_WATERMARK

RUNTIME = Path(gpustream.__file__).parent / "runtime" / "runner.py"
#: the contract: what ``Operator`` declares and the runtime may call or read
CONTRACT = ("process", "process_port", "side_outputs", "on_watermark", "output_watermark",
            "input_watermark", "input_ended", "finish", "counters", "state_rows",
            "state_bytes", "snapshot", "restore", "owned_dictionaries",
            "restore_dictionaries")


def _operator_classes() -> list[type[Operator]]:
    """Every ``Operator`` subclass defined in a module of ``gpustream.operators``."""
    found: list[type[Operator]] = []
    for info in pkgutil.iter_modules(gpustream.operators.__path__):
        module = importlib.import_module(f"gpustream.operators.{info.name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, Operator) and c.__module__ == module.__name__]
    return found


def _self_assigned(cls: type) -> set[str]:
    """Names ``cls``'s own methods assign as ``self.<name> = ...``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names = set()
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign))
                   else [])
        for t in targets:
            if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                    and t.value.id == "self"):
                names.add(t.attr)
    return names


def runtime_probes(source: str, operator_names: set[str]) -> list[str]:
    """What in ``source`` (the runtime's) asks an operator what it is: ``getattr`` /
    ``hasattr`` probes, ``isinstance`` against an operator class, an operator's ad-hoc
    attributes read by name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id in ("getattr", "hasattr"):
            found.append(f"line {node.lineno}: {node.func.id}(...)")
        if node.func.id == "isinstance" and len(node.args) == 2:
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & operator_names:
                found.append(f"line {node.lineno}: isinstance(..., {sorted(named)})")
    return found


def test_the_runtime_asks_no_operator_what_it_is() -> None:
    names = {c.__name__ for c in _operator_classes()} | {"Operator", "TwoInputOperator"}
    assert "WindowAggOp" in names and "UnionOp" in names  # the walk found the operators
    assert runtime_probes(RUNTIME.read_text(), names) == []
    # and the check sees what it looks for
    probe = ("if isinstance(pn.op, TwoInputOperator):\n    pass\n"
             "x = getattr(pn.op, 'late_events', 0)\n")
    assert runtime_probes(probe, names) == ["line 1: isinstance(..., ['TwoInputOperator'])",
                                            "line 3: getattr(...)"]


def test_the_runtime_imports_no_operator_but_the_contract() -> None:
    tree = ast.parse(RUNTIME.read_text())
    imported = {n.module for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module is not None}
    assert {m for m in imported if m.startswith("gpustream.operators")} <= {
        "gpustream.operators.base"}


@pytest.mark.parametrize("cls", _operator_classes(), ids=lambda c: c.__name__)
def test_every_operator_keeps_the_contract(cls: type[Operator]) -> None:
    """Each contract member has the base's kind (method or property) and parameters, no
    operator shadows one with an attribute, and one keeping its input's dictionaries
    takes them back after a restore."""
    for name in CONTRACT:
        base, own = inspect.getattr_static(Operator, name), inspect.getattr_static(cls, name)
        assert isinstance(own, property) == isinstance(base, property), (cls, name)
        if not isinstance(base, property):
            assert (list(inspect.signature(own).parameters)
                    == list(inspect.signature(base).parameters)), (cls, name)
    for klass in cls.__mro__:
        if klass is object or not issubclass(klass, Operator):
            continue
        assigned = _self_assigned(klass)
        assert not assigned & set(CONTRACT), (klass, assigned & set(CONTRACT))
        if "dictionaries" in assigned:
            assert cls.restore_dictionaries is not Operator.restore_dictionaries, cls
    assert isinstance(cls.inputs, int) and cls.inputs >= 1
    if issubclass(cls, TwoInputOperator):
        assert cls.inputs >= 2


def _batch(**cols: list[int]) -> Batch:
    return Batch.from_arrow(pa.record_batch(cols))


def test_one_input_defaults() -> None:
    """One input: the operator's watermark is its input's, passed on unless it computes
    its own; ending is a +infinity watermark and every input has ended."""

    class Own(Operator):
        def __init__(self) -> None:
            self.own = NO_WATERMARK
            self.fired: list[int] = []

        def on_watermark(self, watermark: int) -> list[Batch]:
            self.fired.append(watermark)
            return []

        def output_watermark(self) -> int | None:
            return self.own

    op = Operator()
    assert op.inputs == 1 and op.input_watermark(0, 7) == ([], 7)
    assert op.input_ended(0) == ([], WATERMARK_END, True)
    with pytest.raises(ValueError, match="1 input"):
        op.process_port(1, _batch(x=[1]))
    own = Own()
    assert own.input_watermark(0, 5) == ([], None)  # no watermark of its own yet
    own.own = 3
    assert own.input_watermark(0, 9) == ([], 3) and own.fired == [5, 9]
    assert own.input_ended(0) == ([], 3, True) and own.fired[-1] == WATERMARK_END
    assert OperatorCounters() + OperatorCounters(1, 2, 3) == OperatorCounters(1, 2, 3)


class _Counting(Operator):
    """An operator the runtime has never heard of: it counts, holds state, and fires
    one row at the end."""

    def __init__(self) -> None:
        self.watermarks: list[int] = []
        self.finished = 0
        self.rows = 0

    def process(self, batch: Batch) -> list[Batch]:
        self.rows += batch.num_rows
        self.late_events += 1
        self.dropped_memberships += 2
        self.no_time_events += 3
        return []

    def on_watermark(self, watermark: int) -> list[Batch]:
        self.watermarks.append(watermark)
        return []

    def finish(self) -> list[Batch]:
        self.finished += 1
        return [_batch(ts=[self.rows])]

    @property
    def state_rows(self) -> int:
        return 7

    def state_bytes(self) -> int:
        return 1_000


def _plan(op: Operator) -> Any:
    from gpustream.plan.physical import build_physical

    p = gs.Pipeline("contract", engine="cpu")
    got: list[pa.RecordBatch] = []
    table = pa.table({"ts": np.arange(6, dtype=np.int64) * 10})
    p.source(gs.from_arrow(table, batch_rows=2), event_time="ts").filter(
        gs.col("ts") >= 0).sink(gs.to_callback(got.append))
    plan = build_physical(p._sinks, p.backend)
    (step,) = plan.sources[0].children
    step.op = op
    return plan, got


def test_the_runtime_drives_any_operator_through_the_contract() -> None:
    from gpustream.runtime.runner import _gauges, execute

    op = _Counting()
    plan, got = _plan(op)
    stats = execute(plan, "contract")
    assert (stats.late_events, stats.dropped_memberships, stats.bad_records) == (3, 6, 9)
    assert op.watermarks == [10, 30, 50, WATERMARK_END] and op.finished == 1
    assert [b.to_pydict() for b in got] == [{"ts": [6]}]
    assert _gauges(plan) == {"late_events": 3, "dropped_memberships": 6, "open_windows": 7,
                             "state_bytes": 1_000}


def test_the_state_limit_reads_the_contract() -> None:
    from gpustream.runtime import StateLimitExceeded, execute

    plan, _ = _plan(_Counting())
    with pytest.raises(StateLimitExceeded, match="1,000 bytes for 7 open"):
        execute(plan, "contract", max_state_bytes=999)
