"""Backend-neutral pieces of a training loop: the stream's epochs and the callbacks."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

__all__ = ["epochs", "run_callbacks"]


def epochs(stream: Iterable) -> Iterator:
    """Batches of a stream, epoch after epoch when it can be iterated again (a DataLoader);
    a one-shot iterator gives one epoch."""
    while True:
        it = iter(stream)
        yield from it
        if it is stream:
            return


def run_callbacks(callbacks, step: int, make_result: Callable) -> bool:
    """Run ``callback(step, result)`` for each callback; True when one raises StopIteration.
    The result is built once, only when there are callbacks."""
    if not callbacks:
        return False
    current = make_result()
    for cb in callbacks:
        try:
            cb(step, current)
        except StopIteration:
            return True
    return False
