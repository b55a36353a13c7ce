"""Options shared by all commands, the command-line options they declare alike, and the
console they print to."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flexunet_k3.config import Config, load_config
from flexunet_k3.errors import UserError


@dataclass
class Options:
    backend: str | None = None
    verbose: bool = False
    quiet: bool = False


options = Options()
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="A YAML run config.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a value: section.key=value (repeatable)."),
]
# The text printed holds file names and keys: no rich markup ("[" is a plain character), and
# a line longer than the terminal is not broken (a path stays whole, for scripts).
console = Console(markup=False, soft_wrap=True)
errors = Console(stderr=True, markup=False, soft_wrap=True)


def config_or_defaults(config: Path | None, overrides: list[str] | None) -> Config:
    """The config at `config` with the `--set` overrides, or, with no --config, the defaults
    (where --set is refused: there is no config for it to change)."""
    if config is not None:
        return load_config(config, overrides)
    if overrides:
        raise UserError(f"--set {overrides[0]}: give --config, the config it changes")
    return Config()


def use_backend() -> str:
    """Fix the Keras backend for this process (from --backend or KERAS_BACKEND)."""
    from flexunet_k3.backend import select_backend

    return select_backend(options.backend)


def one_line(text: str) -> str:
    """`text` on one line: characters that are not printable, line breaks of every kind among
    them (a file name may hold one; YAML breaks lines at \\x85 and \\u2028 too), written as
    escapes."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode()
                   for char in text)


def print_warning(message) -> None:
    """One 'warning: ...' line on stderr."""
    errors.print(f"warning: {one_line(str(message))}", style="yellow")


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show each warning as one 'warning: ...' line on stderr, when it happens."""
    def show(message, *_args, **_kwargs):
        print_warning(message)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
