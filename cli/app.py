"""The `flexunet` Typer app: global options, `info`, `summary`, and the command groups."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from flexunet_k3 import __version__, progress
from flexunet_k3.errors import UserError, first_line

from . import benchmark_cmd, config_cmd, prepare_cmd, run_cmd
from .state import ConfigOption, Overrides, console, errors, one_line, options, use_backend

app = typer.Typer(
    name="flexunet",
    help="Train and run 2D segmentation UNets (FlexUNet) on TensorFlow, JAX or PyTorch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(prepare_cmd.app, name="prepare")
app.command("train")(run_cmd.train)
app.command("evaluate")(run_cmd.evaluate)
app.command("infer")(run_cmd.infer)
app.command("benchmark")(benchmark_cmd.benchmark)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flexunet-k3 {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    backend: Annotated[
        str | None,
        typer.Option(
            help="Keras backend: tensorflow, jax or torch.",
            show_default="$KERAS_BACKEND, else tensorflow",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Global options; the backend is fixed before keras is imported."""
    options.backend, options.verbose, options.quiet = backend, verbose, quiet
    progress.configure(quiet)
    if backend is not None:
        use_backend()


@app.command()
def info() -> None:
    """The backend in use, versions, devices, and what `train.precision: auto` picks here.

    Also this process's place among data-parallel processes."""
    backend = use_backend()
    from flexunet_k3.backend import devices, jax_compile_cache, processes, versions
    from flexunet_k3.precision import resolve_precision, this_machine

    table = Table("", "", show_header=False)
    table.add_row("flexunet-k3", __version__)
    table.add_row("python", sys.version.split()[0])
    table.add_row("backend in use", backend)
    for name, version in versions().items():
        table.add_row(name, version)
    index, count = processes()  # joins other JAX processes, which must come before devices()
    table.add_row("devices", ", ".join(devices()))
    table.add_row("process", f"{index} of {count} (data-parallel processes joined)")
    precision, why = resolve_precision("auto", this_machine())
    table.add_row("precision auto", f"{precision} ({why})")
    if backend == "jax":
        table.add_row("JAX compile cache", jax_compile_cache() or "off")
    console.print(table)


@app.command()
def summary(config: ConfigOption, overrides: Overrides = None) -> None:
    """The model's layer table and its `Total params` line."""
    from flexunet_k3.config import load_config

    cfg = load_config(config, overrides)
    use_backend()
    from flexunet_k3.model_io import new_model

    model = new_model(cfg)
    if not console.is_terminal:  # Keras' table would be cut to 80 columns (rich's default)
        os.environ["COLUMNS"] = "110"
    model.summary(line_length=110, print_fn=lambda line, **_: console.print(line))


def main() -> None:
    """Console entry point: runs the command, then ends the process at once (`_exit`)."""
    _exit(run(sys.argv[1:]))


def run(args: list[str]) -> int:
    """Run one command line; return its exit code. Bad input (a usage error, a UserError, a
    file that cannot be written or read) prints one line and gives 2; Ctrl-C prints
    "interrupted" and gives 130."""
    try:
        code = app(args=_bare_volumes(args), standalone_mode=False)
    except (UserError, OSError) as exc:
        code = _fail(_one_line(exc))
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except Exception as exc:
        if _out_of_memory(exc):
            return _fail(f"out of memory ({first_line(exc)}); lower train.batch_size or "
                         "infer.batch_size, the image size, or model.base_filters")
        if not _is_usage_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `flexunet` (or a group) alone: help
            console.print(exc.format_message(), highlight=False)
            code = 2
        else:
            command = exc.ctx.command_path if exc.ctx else "flexunet"  # none: an option's value
            code = _fail(f"{exc.format_message().rstrip('.')} (see {command} --help)")
    if code == 130:  # Ctrl-C (Typer turns it into exit code 130)
        errors.print("interrupted")
    return code if isinstance(code, int) else 0


def _bare_volumes(args: list[str]) -> list[str]:
    """`evaluate --volumes` with no value after it (the end, or another option) scores the
    trained model on the held-out patients: it is passed on as `--volumes=` (empty)."""
    if "evaluate" not in args:
        return args
    return [
        "--volumes=" if arg == "--volumes" and (i + 1 == len(args) or args[i + 1].startswith("-"))
        else arg
        for i, arg in enumerate(args)
    ]


def _one_line(exc: Exception) -> str:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # a folder made where a file is
        return f"{exc.filename}: a file is in the way of a folder to write"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says memory ran out: Python's MemoryError, or a backend's (TensorFlow's
    ResourceExhaustedError, PyTorch's OutOfMemoryError or CPU allocator, JAX's
    RESOURCE_EXHAUSTED), known by name so that no backend is imported."""
    name = type(exc).__name__
    return (isinstance(exc, MemoryError) or name in ("ResourceExhaustedError", "OutOfMemoryError")
            or (name == "JaxRuntimeError" and "RESOURCE_EXHAUSTED" in str(exc))
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def _is_usage_error(exc: Exception) -> bool:
    """A command-line usage error of Typer's click (bad option, missing option, no such command)."""
    return hasattr(exc, "ctx") and hasattr(exc, "format_message") and exc.exit_code == 2


def _fail(message: str) -> int:
    """Print one `error:` line (or re-raise, with --verbose); the exit code 2."""
    if options.verbose:
        raise
    errors.print(f"error: {one_line(message)}", highlight=False)
    return 2


def _exit(code: int) -> NoReturn:
    """End the process at once, the command's output flushed.

    Python's own exit would first unload the backends (0.5 to 1.1 s measured), with the
    default Ctrl-C handler back in place: a Ctrl-C then killed the process without a word.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
