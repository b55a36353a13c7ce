"""Ctrl-C delivered at a safe point and never lost (train, evaluate, infer).

A KeyboardInterrupt raised inside a backend's native code can break it (JAX's compiler
segfaulted; TensorFlow raised SystemError mid-prediction), and one raised inside a garbage
collector callback (JAX registers one) is silently dropped, so the run went on. Within
`deferred()` the first Ctrl-C only marks itself; `raise_if_pressed()` raises `Interrupted` at
the caller's safe point (between training steps, at an epoch's start, between the items of
`progress.track`). A second Ctrl-C interrupts at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Ctrl-C delivered at a safe point: the model is whole and may be saved."""


_pressed = False
_depth = 0


def _mark(signum, frame) -> None:
    global _pressed
    _pressed = True
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C until `raise_if_pressed()`; nested uses share the outermost one.

    A no-op outside the main thread (signals cannot be caught there) and where SIGINT is
    ignored (a background job).
    """
    global _pressed, _depth
    previous = signal.getsignal(signal.SIGINT)
    catchable = threading.current_thread() is threading.main_thread() and previous not in (
        signal.SIG_IGN, None
    )
    if _depth == 0 and catchable:
        _pressed = False
        signal.signal(signal.SIGINT, _mark)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _pressed = False
            if catchable:
                signal.signal(signal.SIGINT, previous)


def raise_if_pressed() -> None:
    """Raise `Interrupted` if Ctrl-C was pressed within `deferred()`."""
    if _pressed:
        raise Interrupted
