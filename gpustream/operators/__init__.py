"""Physical operators: batch-at-a-time, one operator family per module."""

from gpustream.operators.base import Operator
from gpustream.operators.map import FilterOp, ProjectOp

__all__ = ["FilterOp", "Operator", "ProjectOp"]
