"""The ``gpustream`` command line (typer + rich)."""

from __future__ import annotations

import logging
import sys

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
) -> None:
    """Run the demo pipeline over generated events and print what it did."""
    from gpustream.demo import run_demo

    run_demo(events, engine, Console())


def main() -> None:
    """Entry point: exit 2 for a bad pipeline or arguments, 1 for a runtime failure."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        app(standalone_mode=False)
    except GpustreamError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2 if isinstance(exc, ValueError) else 1)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None:
            if hasattr(exc, "show"):
                exc.show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
