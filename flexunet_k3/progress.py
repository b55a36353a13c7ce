"""Progress display for long loops: a rich bar on a terminal, plain lines otherwise, or nothing.

The CLI calls `configure(quiet=...)` once; library loops wrap their iterables in `track`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from flexunet_k3.interrupt import raise_if_pressed

T = TypeVar("T")
_settings = {"quiet": False}
console = Console()


def configure(quiet: bool) -> None:
    """Silence (or not) every progress display of this process."""
    _settings["quiet"] = quiet


def is_quiet() -> bool:
    return _settings["quiet"]


def new_progress(**kwargs) -> Progress:
    """A rich Progress with bar, counts, elapsed time and ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=is_quiet(),
        **kwargs,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield from `items` while showing progress (about ten plain lines when not on a terminal).

    Before each item a Ctrl-C held by `flexunet_k3.interrupt.deferred()` is raised.
    """
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    items = _interruptible(items)
    if is_quiet():
        yield from items
        return
    if not console.is_terminal:
        step = max(1, total // 10)
        for done, item in enumerate(items, 1):
            yield item
            if done % step == 0 or done == total:
                print(f"{description}: {done}/{total}", flush=True)
        return
    with new_progress() as progress:
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)


def _interruptible(items: Iterable[T]) -> Iterator[T]:
    for item in items:
        raise_if_pressed()
        yield item
