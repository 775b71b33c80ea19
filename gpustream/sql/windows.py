"""Flink's windows in SQL: the windowing table-valued functions (``TUMBLE``, ``HOP``,
``SESSION`` over ``TABLE t, DESCRIPTOR(ts)``) and the older group window functions
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

from sqlglot import exp

from gpustream.sql.errors import sql_error
from gpustream.sql.scalar import interval_ms
from gpustream.windows import Session, Sliding, Tumbling, WindowAssigner

__all__ = ["GROUP_WINDOW_PARTS", "group_window", "tvf_window"]

#: Flink's group window auxiliary functions, and the window column each one reads
GROUP_WINDOW_PARTS = {
    f"{w}_{part}": column
    for w in ("TUMBLE", "HOP", "SESSION")
    for part, column in (("START", "window_start"), ("END", "window_end"),
                         ("ROWTIME", "window_time"))
}
_ARGS = {"TUMBLE": "TUMBLE(TABLE t, DESCRIPTOR(ts), size)",
         "HOP": "HOP(TABLE t, DESCRIPTOR(ts), slide, size)",
         "SESSION": "SESSION(TABLE t, DESCRIPTOR(ts), gap)"}


def _assigner(name: str, spans: list[exp.Expression], call: exp.Expression,
              text: str, usage: str) -> WindowAssigner:
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
    if name == "CUMULATE":
        raise sql_error("CUMULATE windows are not supported yet; use HOP (a sliding "
                        "window) or TUMBLE, or a running GROUP BY without a window",
                        call, text)
    raise sql_error(f"{name} takes {usage}", call, text)


def tvf_window(call: exp.Expression, text: str
               ) -> tuple[exp.Table, exp.Column, WindowAssigner]:
    """The input table, the time column and the window of a windowing TVF call.

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> q = parse("SELECT * FROM TABLE(TUMBLE(TABLE b, DESCRIPTOR(t), INTERVAL '1' MINUTE))")
    >>> tvf_window(q[0].find(exp.Anonymous).expressions[0], "")[2]
    Tumbling(size_ms=60000, offset_ms=0)
    """
    name = call.name.upper() if isinstance(call, exp.Anonymous) else ""
    if name not in (*_ARGS, "CUMULATE"):
        raise sql_error("FROM TABLE(...) takes a windowing function: "
                        + ", ".join(_ARGS.values()), call, text)
    args = list(call.expressions)
    usage = _ARGS.get(name, "CUMULATE(TABLE t, DESCRIPTOR(ts), step, size)")
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
    if not isinstance(call, exp.Anonymous) or call.name.upper() not in (*_ARGS, "CUMULATE"):
        return None
    name = call.name.upper()
    args = list(call.expressions)
    usage = {"TUMBLE": "TUMBLE(ts, size)", "HOP": "HOP(ts, slide, size)",
             "SESSION": "SESSION(ts, gap)"}.get(name, "")
    if not args or not isinstance(args[0], exp.Column):
        raise sql_error(f"{name} in GROUP BY takes {usage}", call, text)
    return args[0], _assigner(name, args[1:], call, text, usage)
