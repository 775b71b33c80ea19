"""Operator state: keyed slot tables and mergeable aggregation states."""

from gpustream.state.aggstate import AggState, UpdateContext, make_state
from gpustream.state.table import SlotTable

__all__ = ["AggState", "SlotTable", "UpdateContext", "make_state"]
