"""Flink's windows in SQL: the windowing table-valued functions (``TUMBLE``, ``HOP``,
``SESSION``, ``CUMULATE`` over ``TABLE t, DESCRIPTOR(ts)``) and the older group window functions
(``GROUP BY TUMBLE(ts, INTERVAL ...)`` with ``TUMBLE_START(...)`` / ``TUMBLE_END(...)``).

Examples
--------
>>> from gpustream.sql.dialect import parse
>>> q = parse("SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, "
...           "INTERVAL '10' SECOND))")[0]
>>> table, column, window = tvf_window(q.find(exp.Anonymous).expressions[0], "")
>>> table.name, column.name, window
('bid', 'ts', Sliding(size_ms=10000, slide_ms=2000, offset_ms=0))
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from gpustream.sql.errors import sql_error
from gpustream.sql.scalar import interval_ms
from gpustream.windows import Session, Sliding, Tumbling, WindowAssigner

__all__ = ["GROUP_WINDOW_PARTS", "Cumulate", "group_window", "tvf_window"]

#: Flink's group window auxiliary functions, and the window column each one reads
GROUP_WINDOW_PARTS = {
    f"{w}_{part}": column
    for w in ("TUMBLE", "HOP", "SESSION")
    for part, column in (("START", "window_start"), ("END", "window_end"),
                         ("ROWTIME", "window_time"))
}
_ARGS = {"TUMBLE": "TUMBLE(TABLE t, DESCRIPTOR(ts), size)",
         "HOP": "HOP(TABLE t, DESCRIPTOR(ts), slide, size)",
         "SESSION": "SESSION(TABLE t, DESCRIPTOR(ts), gap)",
         "CUMULATE": "CUMULATE(TABLE t, DESCRIPTOR(ts), step, size)"}


@dataclass(frozen=True)
class Cumulate:
    """Flink's cumulating windows: every ``step`` a window from the start of the current
    ``size`` period to that step's end (``[0, 1m)``, ``[0, 2m)`` ... ``[0, 1h)``, then
    ``[1h, 1h+1m)`` ...). Run as a sliding window of ``size`` every ``step`` per period
    (the period a key): a sliding window ending within the period holds exactly the
    period's rows before its end (:meth:`gpustream.sql.query.Translator.aggregate`).

    Examples
    --------
    >>> Cumulate(60_000, 3_600_000).sliding
    Sliding(size_ms=3600000, slide_ms=60000, offset_ms=0)
    """

    step_ms: int
    size_ms: int

    @property
    def sliding(self) -> Sliding:
        """The sliding window each period runs."""
        return Sliding(self.size_ms, self.step_ms)

    def describe(self) -> str:
        """How ``explain`` names it.

        >>> Cumulate(1000, 4000).describe()
        'cumulate(1000ms up to 4000ms)'
        """
        return f"cumulate({self.step_ms}ms up to {self.size_ms}ms)"


def _assigner(name: str, spans: list[exp.Expression], call: exp.Expression,
              text: str, usage: str) -> WindowAssigner | Cumulate:
    ms = [interval_ms(s, text) for s in spans]
    if name == "TUMBLE" and len(ms) in (1, 2):
        return Tumbling(ms[0], ms[1] if len(ms) > 1 else 0)
    if name == "HOP" and len(ms) in (2, 3):
        slide, size = ms[0], ms[1]
        if size % slide:
            raise sql_error(f"HOP: the size ({size} ms) must be a multiple of the slide "
                            f"({slide} ms)", call, text)
        return Sliding(size, slide, ms[2] if len(ms) > 2 else 0)
    if name == "SESSION" and len(ms) == 1:
        return Session(ms[0])
    if name == "CUMULATE" and len(ms) == 2:
        step, size = ms
        if size % step:
            raise sql_error(f"CUMULATE: the size ({size} ms) must be a multiple of the step "
                            f"({step} ms)", call, text)
        return Cumulate(step, size)
    raise sql_error(f"{name} takes {usage}", call, text)


def tvf_window(call: exp.Expression, text: str
               ) -> tuple[exp.Table, exp.Column, WindowAssigner | Cumulate]:
    """The input table, the time column and the window of a windowing TVF call.

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> q = parse("SELECT * FROM TABLE(TUMBLE(TABLE b, DESCRIPTOR(t), INTERVAL '1' MINUTE))")
    >>> tvf_window(q[0].find(exp.Anonymous).expressions[0], "")[2]
    Tumbling(size_ms=60000, offset_ms=0)
    """
    name = call.name.upper() if isinstance(call, exp.Anonymous) else ""
    if name not in _ARGS:
        raise sql_error("FROM TABLE(...) takes a windowing function: "
                        + ", ".join(_ARGS.values()), call, text)
    args = list(call.expressions)
    usage = _ARGS[name]
    if len(args) < 3 or not isinstance(args[0], exp.Table) \
            or not (isinstance(args[1], exp.Anonymous) and args[1].name.upper() == "DESCRIPTOR"
                    and len(args[1].expressions) == 1
                    and isinstance(args[1].expressions[0], exp.Column)):
        raise sql_error(f"{name} takes {usage}", call, text)
    return args[0], args[1].expressions[0], _assigner(name, args[2:], call, text, usage)


def group_window(call: exp.Expression, text: str) -> tuple[exp.Column, WindowAssigner] | None:
    """``(time column, window)`` of a group window function (``TUMBLE(ts, size)``,
    ``HOP(ts, slide, size)``, ``SESSION(ts, gap)``) in a GROUP BY; ``None`` for any other
    grouping expression.

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> g = parse("SELECT 1 FROM b GROUP BY SESSION(ts, INTERVAL '10' SECOND)")[0]
    >>> group_window(g.args["group"].expressions[0], "")[1]
    Session(gap_ms=10000)
    """
    if not isinstance(call, exp.Anonymous) or call.name.upper() not in _ARGS:
        return None
    name = call.name.upper()
    args = list(call.expressions)
    usage = {"TUMBLE": "TUMBLE(ts, size)", "HOP": "HOP(ts, slide, size)",
             "SESSION": "SESSION(ts, gap)"}.get(name, "")
    if name == "CUMULATE":
        raise sql_error("CUMULATE is a windowing table-valued function: FROM TABLE("
                        "CUMULATE(TABLE t, DESCRIPTOR(ts), step, size)) ... GROUP BY "
                        "window_start, window_end", call, text)
    if not args or not isinstance(args[0], exp.Column):
        raise sql_error(f"{name} in GROUP BY takes {usage}", call, text)
    assigner = _assigner(name, args[1:], call, text, usage)
    assert not isinstance(assigner, Cumulate)
    return args[0], assigner
