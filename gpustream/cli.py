"""The ``gpustream`` command line (typer + rich).

Exit codes: 0 ok, 2 a bad spec or bad arguments (found before anything runs), 1 a
failure while running, 130 stopped by Ctrl-C (cleanly, with a summary).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

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


class Interrupted(Exception):
    """The run was stopped by Ctrl-C."""


class RunFailed(GpustreamError, RuntimeError):
    """An error raised while the pipeline ran (exit 1, not 2)."""


@app.command()
def run(
    spec: Path = typer.Argument(..., help="The pipeline spec (YAML)."),
    engine: str = typer.Option(None, help=ENGINE_HELP),
    checkpoint_dir: Path = typer.Option(None, help="Where checkpoints go (overrides the spec)."),
    max_events: int = typer.Option(None, help="Stop after this many input events."),
    metrics_port: int = typer.Option(None, help="Serve Prometheus metrics on this port."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address for --metrics-port."),
    live: bool = typer.Option(True, help="Show the live view (a log line per interval "
                                         "when stdout is not a terminal)."),
) -> None:
    """Run a pipeline spec until its bounded sources end (or Ctrl-C)."""
    from gpustream.live import LiveView
    from gpustream.metrics import Metrics, serve_prometheus
    from gpustream.spec import build_pipeline, checkpointing_from_spec, load_spec

    parsed, where = load_spec(spec)
    p = build_pipeline(parsed, where, engine)
    checkpoint = checkpointing_from_spec(parsed, where,
                                         None if checkpoint_dir is None else str(checkpoint_dir))
    console = Console()
    console.print(f"[bold]{p.name}[/bold] on {p.backend.describe()}", highlight=False)
    metrics = Metrics(p.name, p.backend.name)
    server = serve_prometheus(metrics, metrics_port, metrics_host) \
        if metrics_port is not None else None
    if server is not None:
        console.print(f"metrics: http://{metrics_host}:{server.server_port}/metrics",
                      highlight=False)
    try:
        if live:
            with LiveView(metrics, console):
                stats = p.run(max_events=max_events, metrics=metrics, checkpoint=checkpoint)
        else:
            stats = p.run(max_events=max_events, metrics=metrics, checkpoint=checkpoint)
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
        raise Interrupted


@app.command()
def validate(spec: Path = typer.Argument(..., help="The pipeline spec (YAML).")) -> None:
    """Check a spec (fields, expressions, columns and types, windows) without running it."""
    from gpustream.spec import pipeline_from_spec

    p = pipeline_from_spec(spec, "cpu")
    Console().print(f"{spec}: ok (pipeline {p.name!r})", highlight=False, soft_wrap=True)


@app.command()
def explain(
    spec: Path = typer.Argument(..., help="The pipeline spec (YAML)."),
    engine: str = typer.Option(None, help=ENGINE_HELP),
) -> None:
    """Print the plan, the backend that would run it and, on fallback, why."""
    from gpustream.spec import pipeline_from_spec

    Console().print(pipeline_from_spec(spec, engine).explain(), highlight=False)


@app.command()
def info(
    engine: str = typer.Option("auto", help="Engine to probe: auto, cpu or cuda."),
) -> None:
    """Which backend would run, the GPU (name, memory, driver, compute capability), versions."""
    from gpustream.info import environment_report

    console = Console()
    for line in environment_report(engine).lines():
        key, _, value = line.partition(": ")
        console.print(f"[bold]{key}[/bold]: {value}", highlight=False)


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
        raise Interrupted


@generate_app.command("nexmark")
def generate_nexmark(
    out: Path = typer.Option(..., help="A .parquet file (one stream) or a folder (all three)."),
    events: int = typer.Option(1_000_000, help="Generator events (people + auctions + bids)."),
    seed: int = typer.Option(0, help="Same seed, same events."),
    stream: str = typer.Option("bids", help="bids, auctions, persons, or all (into a folder)."),
) -> None:
    """Write Nexmark events to Parquet."""
    import pyarrow.parquet as pq

    import gpustream as gs

    kinds = ["persons", "auctions", "bids"] if stream == "all" else [stream]
    if any(k not in ("persons", "auctions", "bids") for k in kinds):
        raise typer.BadParameter(f"{stream!r} is not one of bids, auctions, persons, all",
                                 param_hint="--stream")
    if stream == "all" and out.suffix == ".parquet":
        raise typer.BadParameter("--stream all writes three files: give a folder",
                                 param_hint="--out")
    gen = gs.nexmark(events=events, seed=seed)
    console = Console()
    for kind in kinds:
        target = out if stream != "all" else out / f"{kind}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        source = getattr(gen, kind)
        writer = None
        rows = 0
        for b in source.open():
            if writer is None:
                writer = pq.ParquetWriter(target, b.data.schema)
            writer.write_batch(b.data)
            rows += b.data.num_rows
        if writer is None:
            pq.write_table(source.schema().empty_table(), target)
        else:
            writer.close()
        console.print(f"{target}: {rows:,} {kind}", highlight=False)


def main() -> None:
    """Entry point: exit 2 for a bad spec or arguments, 1 for a runtime failure."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        app(standalone_mode=False)
    except Interrupted:
        sys.exit(130)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted", highlight=False)
        sys.exit(130)
    except GpustreamError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False,
                                  soft_wrap=True)
        sys.exit(2 if isinstance(exc, ValueError) else 1)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None:
            if hasattr(exc, "show"):
                exc.show()
            sys.exit(code)
        Console(stderr=True).print(f"[red]failed:[/red] {type(exc).__name__}: {exc}",
                                   highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
