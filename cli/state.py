"""Options shared by all commands, and the console they print to."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console


@dataclass
class Options:
    backend: str | None = None
    verbose: bool = False
    quiet: bool = False


options = Options()
console = Console()
errors = Console(stderr=True)


def use_backend() -> str:
    """Fix the Keras backend for this process (from --backend or KERAS_BACKEND)."""
    from flexunet_k3.backend import select_backend

    return select_backend(options.backend)
