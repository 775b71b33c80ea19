"""The ``gpustream`` command line (typer + rich).

Exit codes: 0 ok, 2 a bad spec or bad arguments (found before anything runs, every
error of a spec at once), 1 a failure while running (or, for ``info``, an engine this
machine cannot run), 130 stopped by Ctrl-C and 143 stopped by SIGTERM (both cleanly:
sources stopped, sinks closed, the summary printed).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gpustream.errors import GpustreamError

__all__ = ["app", "main"]

app = typer.Typer(
    name="gpustream",
    help="Event-time stream processing on NVIDIA GPUs, with numba CPU twins.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
generate_app = typer.Typer(help="Generate test data.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")

ENGINE_HELP = "auto, cpu or cuda (overrides the spec; GPUSTREAM_ENGINE overrides both)."
CLUSTER_HELP = ("Run as partitions on Dask: local:N (a LocalCluster of N worker processes "
                "started here) or dask://HOST:PORT (a running scheduler). Overrides the "
                "spec's cluster:.")
PARALLELISM_HELP = ("How many partitions (default: the N of local:N). Each reads its share "
                    "of the source; rows are repartitioned by the keyed steps' key. Without "
                    "--cluster, more than 1 starts a LocalCluster of that many workers. "
                    "Overrides the spec's parallelism:.")
#: exit statuses of a clean stop: 128 + the signal's number, as a shell reports it
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Interrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: a run stops the way it does on Ctrl-C."""


_terminated = threading.Event()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _terminated.is_set():
        return  # the first one is already stopping the run: let it close the sinks
    _terminated.set()
    raise Terminated


def handle_sigterm() -> None:
    """Make SIGTERM stop like Ctrl-C outside a run's loop (while the spec is read or the
    kernels compile), with exit status 143 (128 + SIGTERM, what ``docker stop`` and
    Kubernetes report for a process that ended on SIGTERM; not 0, so a Job stopped
    mid-stream is not taken as done). While the run's loop is active, the runtime
    handles SIGINT and SIGTERM itself (``gpustream.runtime.stopping``): it finishes the batch in
    hand, takes a final checkpoint, commits the sinks and prints the summary; a second
    signal stops at once. No-op off the main thread, where Python cannot install signal
    handlers.

    Examples
    --------
    >>> import signal
    >>> before = signal.getsignal(signal.SIGTERM)
    >>> handle_sigterm()
    >>> signal.getsignal(signal.SIGTERM).__name__
    '_on_sigterm'
    >>> _ = signal.signal(signal.SIGTERM, before)
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _stopped_status() -> int:
    return EXIT_SIGTERM if _terminated.is_set() else EXIT_SIGINT


def _say(console: Console, label: str, style: str, message: str) -> None:
    """``label: message``, the message printed as is (no rich markup in it)."""
    console.print(Text.assemble((f"{label}:", style), " ", message), highlight=False,
                  soft_wrap=True)


def _versions() -> str:
    import importlib.metadata as md
    import platform

    found = []
    for dist in ("gpustream", "numba", "pyarrow"):
        try:
            found.append(md.version(dist))
        except md.PackageNotFoundError:
            found.append("not installed")
    return (f"gpustream {found[0]} (numba {found[1]}, pyarrow {found[2]}, "
            f"python {platform.python_version()})")


def _version_option(value: bool) -> None:
    if value:
        Console().print(_versions(), highlight=False)
        raise typer.Exit


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_version_option,
                                 is_eager=True, help="Print the versions and exit."),
) -> None:
    """Event-time stream processing on NVIDIA GPUs, with numba CPU twins."""


class RunFailed(GpustreamError, RuntimeError):
    """An error raised while the pipeline ran (exit 1, not 2)."""


@app.command()
def run(
    spec: Path = typer.Argument(..., help="The pipeline spec (YAML)."),
    engine: str = typer.Option(None, help=ENGINE_HELP),
    checkpoint_dir: str = typer.Option(None, help="Where checkpoints go (overrides the spec): "
                                       "a folder, or a URL (s3://bucket/ck, through fsspec)."),
    max_events: int = typer.Option(None, help="Stop after this many input events."),
    metrics_port: int = typer.Option(None, envvar="GPUSTREAM_METRICS_PORT",
                                     help="Serve Prometheus metrics on this port."),
    metrics_host: str = typer.Option("127.0.0.1", envvar="GPUSTREAM_METRICS_HOST",
                                     help="Address for --metrics-port (0.0.0.0: every "
                                          "interface, as the container image sets)."),
    live: bool = typer.Option(True, help="Show the live view (a log line per interval "
                                         "when stdout is not a terminal)."),
    cluster: str = typer.Option(None, help=CLUSTER_HELP),
    parallelism: int = typer.Option(None, min=1, help=PARALLELISM_HELP),
) -> None:
    """Run a pipeline spec until its bounded sources end (or Ctrl-C, or SIGTERM).

    Ctrl-C and SIGTERM stop it cleanly at a batch boundary (sources stopped, a final checkpoint taken when the spec checkpoints, sinks committed and closed, the summary printed) with exit status 130 and 143; a second signal stops at once. With --cluster / --parallelism (or the spec's cluster: / parallelism:) it runs as partitions on Dask, the live view and the metrics showing each partition.
    """
    from gpustream.spec import check_spec

    checked = check_spec(spec, engine,
                         checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir))
    checked.raise_errors()
    _execute(checked.pipeline, checked.checkpoint, max_events, metrics_port, metrics_host, live,
             cluster if cluster is not None else checked.cluster,
             parallelism if parallelism is not None else checked.parallelism)


def _execute(p: Any, checkpoint: Any, max_events: int | None, metrics_port: int | None,
             metrics_host: str, live: bool, cluster: str | None = None,
             parallelism: int | None = None) -> None:
    """Run ``p`` to the end as ``run`` does: the header, metrics, the live view, the
    summary; a failure while running is :class:`RunFailed`, a clean stop
    :class:`Interrupted`. ``cluster`` / ``parallelism`` (either one): partitions on Dask
    (:meth:`gpustream.Pipeline.run`); neither: in this process."""
    from gpustream.live import LiveView
    from gpustream.metrics import Metrics, serve_prometheus

    console = Console()
    console.print(f"[bold]{p.name}[/bold] on {p.backend.describe()}", highlight=False)
    metrics = Metrics(p.name, p.backend.name)
    server = serve_prometheus(metrics, metrics_port, metrics_host) \
        if metrics_port is not None else None
    if server is not None:
        console.print(f"metrics: http://{metrics_host}:{server.server_port}/metrics",
                      highlight=False)
    scale: dict[str, Any] = {}
    if cluster is not None or parallelism is not None:
        scale = {"cluster": cluster, "parallelism": parallelism}
        # Dask's INFO lines (scheduler and workers starting, connections) would bury the
        # live view; its warnings and errors still show. The workers read it at start.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        if live:
            with LiveView(metrics, console):
                stats = p.run(max_events=max_events, metrics=metrics, checkpoint=checkpoint,
                              exit_on_sigterm=False, **scale)
        else:
            stats = p.run(max_events=max_events, metrics=metrics, checkpoint=checkpoint,
                          exit_on_sigterm=False, **scale)
    except GpustreamError as err:  # e.g. a file of the wrong format, met while running
        raise RunFailed(str(err)) from err
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    if stats.restored_checkpoint is not None:
        console.print(f"resumed from checkpoint {stats.restored_checkpoint}", highlight=False)
    console.print(stats.summary(), highlight=False, soft_wrap=True)
    if stats.interrupted:
        if stats.stopped_by == "SIGTERM":
            _terminated.set()
        if _terminated.is_set():
            console.print("stopped by SIGTERM", highlight=False)
        raise Interrupted


SQL_SOURCE_HELP = ("NAME=PATH: a file, glob or folder the query reads as NAME, its format by "
                   "suffix (.parquet; .arrow, .feather, .ipc; .csv; .jsonl, .ndjson, .json). "
                   "Repeat for each input. A CREATE TABLE NAME (..., WATERMARK FOR ts AS ts - "
                   "INTERVAL '2' SECOND) in the text gives it its event time.")


def _sql_sources(given: list[str]) -> dict[str, Any]:
    """``--source NAME=PATH`` options: the file readers by name."""
    from gpustream.spec.yaml_spec import file_reader, file_type

    sources: dict[str, Any] = {}
    for item in given:
        name, eq, path = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier() or not path:
            raise typer.BadParameter(f"{item!r}: give NAME=PATH, e.g. bid=data/bids.parquet "
                                     "(NAME as the query's FROM names it)",
                                     param_hint="--source")
        if name in sources:
            raise typer.BadParameter(f"{name!r} is given twice", param_hint="--source")
        try:
            sources[name] = file_reader(file_type(path))(path)
        except (OSError, ValueError, GpustreamError) as err:
            raise typer.BadParameter(f"{item}: {err}", param_hint="--source") from None
    return sources


def _sql_text(query: str | None, file: Path | None) -> str:
    """The SQL text: the argument or ``--file`` (``-``: stdin), exactly one of them."""
    if (query is None) == (file is None):
        raise typer.BadParameter("give the SQL text as the argument or --file q.sql, one of "
                                 "them", param_hint="QUERY")
    if file is None:
        assert query is not None
        if query.startswith("@") and len(query.split()) == 1:
            raise typer.BadParameter(f"to read the SQL text from a file, give --file "
                                     f"{query[1:]}", param_hint="QUERY")
        return query
    if str(file) == "-":
        return sys.stdin.read()
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise typer.BadParameter(f"cannot read {file}: {err}", param_hint="--file") from None


@app.command()
def sql(
    query: str = typer.Argument(None, show_default=False, metavar="QUERY",
                                help="The SQL text (Flink SQL): CREATE TABLE and CREATE VIEW "
                                     "statements, then a query, separated by ';'. Or --file."),
    source: list[str] = typer.Option([], "--source", "-s", show_default=False,
                                     help=SQL_SOURCE_HELP),
    file: Path = typer.Option(None, "--file", "-f",
                              help="Read the SQL text from this file ('-': stdin) instead of "
                                   "the argument."),
    out: str = typer.Option("console", help="console (a table per batch), or a path: "
                                            "*.parquet, *.csv or *.jsonl writes that file, "
                                            "any other path a folder of Parquet part files."),
    overwrite: bool = typer.Option(False, help="Replace an --out file that is there (else "
                                               "the run refuses to, before it starts)."),
    engine: str = typer.Option(None, help="auto, cpu or cuda (GPUSTREAM_ENGINE overrides)."),
    max_rows: int = typer.Option(20, help="With --out console: at most this many rows of "
                                          "each batch printed."),
    max_events: int = typer.Option(None, help="Stop after this many input events."),
    explain: bool = typer.Option(False, help="Print the plan instead of running it."),
    live: bool = typer.Option(None, help="Show the live view (default: on with an --out "
                                         "file, off with console output)."),
) -> None:
    """Run a SQL query (Flink SQL) over files, as a stream, until its inputs end.

    `gpustream sql "SELECT auction, price FROM bid WHERE price > 1000" --source bid=data/bids.parquet`. The text may start with CREATE TABLE bid (..., WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND) to give a source its event time (for TUMBLE, HOP, SESSION and interval joins) and CREATE VIEW statements; the last query's rows go to --out. A bad query exits 2, naming the SQL line and column.
    """
    import gpustream as gs
    from gpustream.spec.yaml_spec import output_sink

    text = _sql_text(query, file)
    sources = _sql_sources(source)
    if max_rows < 1:
        raise typer.BadParameter(f"must be >= 1, got {max_rows}", param_hint="--max-rows")
    try:
        sink = output_sink(out, max_rows, mode="overwrite" if overwrite and out != "console"
                           else None)
    except (OSError, ValueError, GpustreamError) as err:
        raise typer.BadParameter(str(err), param_hint="--out") from None
    if getattr(sink, "single", False) and not overwrite and Path(out).exists():
        raise typer.BadParameter(f"{out} exists: give --overwrite to replace it, or another "
                                 "path", param_hint="--out")
    p = gs.Pipeline("sql", engine=engine or "auto")
    p.sql(text, sources=sources).sink(sink)
    if explain:
        Console().print(p.explain(), highlight=False, markup=False, soft_wrap=True)
        return
    _execute(p, None, max_events, None, "127.0.0.1", out != "console" if live is None else live)


@app.command()
def validate(spec: Path = typer.Argument(..., help="The pipeline spec (YAML).")) -> None:
    """Check a spec (fields, expressions, columns and types, windows) without running it.

    Every error is reported, each with file:line and the field, and the exit status is then 2. The input files are not needed: a missing one is an error naming its path field, or, for a CSV/JSONL source whose schema: gives every column, a warning, the rest of the spec being checked against that schema. Nothing runs; no GPU is used.
    """
    from gpustream.spec import check_spec

    checked = check_spec(spec, "cpu", need_inputs=False)
    err = Console(stderr=True)
    for w in checked.warnings:
        _say(err, "warning", "yellow", w)
    if checked.errors:
        for e in checked.errors:
            _say(err, "error", "red", e)
        n = len(checked.errors)
        err.print(f"{spec}: {n} error{'s' if n > 1 else ''}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    n = len(checked.warnings)
    note = f", {n} warning{'s' if n > 1 else ''}" if n else ""
    Console().print(f"{spec}: ok (pipeline {checked.name!r}){note}", highlight=False,
                    soft_wrap=True)


@app.command()
def explain(
    spec: Path = typer.Argument(..., help="The pipeline spec (YAML)."),
    engine: str = typer.Option(None, help=ENGINE_HELP),
    parallelism: int = typer.Option(None, min=1, help="Also print how a run of this many "
                                                      "partitions splits (the source's "
                                                      "shares, the key rows are "
                                                      "repartitioned by), or why it cannot. "
                                                      "Overrides the spec's parallelism:."),
) -> None:
    """Print the plan, the backend that would run it and, on fallback, why; with --parallelism (or the spec's parallelism:), its partitioning."""
    from gpustream.spec import check_spec

    checked = check_spec(spec, engine)
    checked.raise_errors()
    n = parallelism if parallelism is not None else checked.parallelism
    Console().print(checked.pipeline.explain(parallelism=n), highlight=False, markup=False)


@app.command()
def info(
    engine: str = typer.Option("auto", help="Engine to probe: auto, cpu or cuda."),
) -> None:
    """Which backend would run, the GPU (name, memory, driver, compute capability), versions.

    Exits 1, saying why, when the engine asked for cannot run on this machine (--engine cuda without a usable GPU): the question is valid but this machine cannot serve it, as `run` then exits 1; exit 2 is kept for bad arguments (--engine tpu). So `gpustream info --engine cuda` checks a GPU node or container.
    """
    from gpustream.backend import ENGINES
    from gpustream.info import environment_report

    if engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r} is not one of {', '.join(ENGINES)}",
                                 param_hint="--engine")
    console = Console()
    report = environment_report(engine)
    for line in report.lines():
        key, _, value = line.partition(": ")
        console.print(Text.assemble((key, "bold"), ": ", value), highlight=False,
                      soft_wrap=True)
    if report.backend == "none":
        _say(Console(stderr=True), "error", "red",
             f"engine {engine!r} cannot run on this machine: {report.reason}")
        raise typer.Exit(1)


@app.command()
def demo(
    events: int = typer.Option(2_000_000, help="How many Nexmark events to generate."),
    engine: str = typer.Option("auto", help="auto, cpu or cuda (GPUSTREAM_ENGINE overrides)."),
    live: bool = typer.Option(True, help="Show the live view while it runs."),
) -> None:
    """Hot auctions and a bidder velocity check over generated Nexmark bids, live."""
    from gpustream.demo import run_demo

    stats = run_demo(events, engine, Console(), live=live)
    if stats.interrupted:
        if stats.stopped_by == "SIGTERM":
            _terminated.set()
        raise Interrupted


@generate_app.command("nexmark")
def generate_nexmark(
    out: Path = typer.Option(..., help="A file (one stream: .parquet, or .arrow for Arrow "
                                       "IPC) or a folder (--stream all)."),
    events: int = typer.Option(1_000_000, help="Generator events (people + auctions + bids)."),
    seed: int = typer.Option(0, help="Same seed, same events."),
    stream: str = typer.Option("bids", help="bids, auctions, persons, or all (into a folder)."),
    format: str = typer.Option("", help="parquet or arrow (IPC file); default: the --out "
                                        "file's suffix, else parquet."),
) -> None:
    """Write Nexmark events to Parquet or Arrow IPC files."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    import gpustream as gs

    kinds = ["persons", "auctions", "bids"] if stream == "all" else [stream]
    if any(k not in ("persons", "auctions", "bids") for k in kinds):
        raise typer.BadParameter(f"{stream!r} is not one of bids, auctions, persons, all",
                                 param_hint="--stream")
    suffixes = {".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow"}
    if stream == "all" and out.suffix in suffixes:
        raise typer.BadParameter("--stream all writes three files: give a folder",
                                 param_hint="--out")
    fmt = format or suffixes.get(out.suffix, "parquet")
    if fmt not in ("parquet", "arrow"):
        raise typer.BadParameter(f"{format!r} is not parquet or arrow", param_hint="--format")
    gen = gs.nexmark(events=events, seed=seed)
    console = Console()
    for kind in kinds:
        target = out if stream != "all" else out / f"{kind}.{fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        source = getattr(gen, kind)
        writer: Any = None
        rows = 0
        for b in source.open():  # the file takes the batches' schema (channel: a dictionary)
            if writer is None:
                writer = (pq.ParquetWriter(target, b.data.schema) if fmt == "parquet"
                          else ipc.new_file(str(target), b.data.schema))
            writer.write_batch(b.data)
            rows += b.data.num_rows
        if writer is None:
            writer = (pq.ParquetWriter(target, source.schema()) if fmt == "parquet"
                      else ipc.new_file(str(target), source.schema()))
        writer.close()
        console.print(f"{target}: {rows:,} {kind}", highlight=False)


bench_app = typer.Typer(help="Benchmarks: the Nexmark queries.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("nexmark")
def bench_nexmark(
    query: str = typer.Option("all", help="q0 .. q22, a list (q1,q5) or all."),
    events: int = typer.Option(1_000_000, help="Generator events (persons + auctions + bids)."),
    seed: int = typer.Option(0, help="Same seed, same events."),
    engine: str = typer.Option("auto", help="cpu, cuda or auto (gpustream), or duckdb (the "
                                            "query's SQL, as batch; needs gpustream[bench])."),
    out: Path = typer.Option(..., help="Folder for result.parquet and timing.json (with "
                                       "several queries: a folder per query and a summary "
                                       "timing.json)."),
    warmup: bool = typer.Option(True, help="Run each query on 20,000 events first, untimed "
                                           "(compiles its kernels)."),
    sql: bool = typer.Option(False, help="Build each query from its SQL text (Flink's "
                                         "Nexmark SQL, run by `Pipeline.sql`) instead of the "
                                         "Python API; with --query all, every query that "
                                         "runs from SQL."),
) -> None:
    """Run Nexmark queries on generated events and time them (events in, seconds, events/s).

    The input comes from the project's Nexmark generator (`gs.nexmark`), made in memory before the timing starts; each query is one gpustream pipeline, or with --engine duckdb the same query as DuckDB SQL. `benchmarks/nexmark/README.md` lists the queries and their stand-ins.
    """
    from gpustream.bench.nexmark import query_names
    from gpustream.bench.runner import ENGINES, bench, sql_names

    try:
        names = query_names(query)
        if sql:
            names = sql_names(names, every=query.strip().lower() == "all")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--query") from None
    if engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r} is not one of {', '.join(ENGINES)}",
                                 param_hint="--engine")
    if sql and engine == "duckdb":
        raise typer.BadParameter("--sql builds gpustream's pipeline from each query's SQL "
                                 "text; DuckDB runs SQL already: use cpu, cuda or auto",
                                 param_hint="--engine")
    if events < 1:
        raise typer.BadParameter(f"must be >= 1, got {events}", param_hint="--events")
    console = Console()
    results = bench(names, events, seed, engine, out, warmup=warmup, sql=sql)
    table = Table("query", "backend", "rows out", "seconds", "events/s",
                  title="from SQL text" if sql else None)
    for r in results:
        table.add_row(r.query, r.backend, f"{r.table.num_rows:,}", f"{r.seconds:.3f}",
                      f"{r.events_per_s:,.0f}")
    console.print(table)
    console.print(f"{events:,} events (seed {seed}) -> {out}", highlight=False)


def main() -> None:
    """Entry point: exit 2 for a bad spec or arguments, 1 for a runtime failure, 130 and
    143 for a clean stop on Ctrl-C and SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    handle_sigterm()
    try:
        # typer returns typer.Exit's code rather than raising it, and turns a
        # KeyboardInterrupt (Ctrl-C or SIGTERM outside a run's loop) into 130
        status = app(standalone_mode=False)
    except Interrupted:
        sys.exit(_stopped_status())
    except KeyboardInterrupt:
        status = EXIT_SIGINT
    except GpustreamError as exc:
        err = Console(stderr=True)
        for message in getattr(exc, "messages", [str(exc)]):
            _say(err, "error", "red", message)
        sys.exit(2 if isinstance(exc, ValueError) else 1)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None:
            if hasattr(exc, "show"):
                exc.show()
            sys.exit(code)
        _say(Console(stderr=True), "failed", "red", f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    if status == EXIT_SIGINT:
        Console(stderr=True).print("stopped by SIGTERM" if _terminated.is_set() else
                                   "interrupted", highlight=False)
        sys.exit(_stopped_status())
    if isinstance(status, int):
        sys.exit(status)


if __name__ == "__main__":
    main()
