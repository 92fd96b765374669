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


def checked_batches(problem, first_step: int, end: int) -> Iterator[tuple]:
    """The stream's batches for steps first_step..end-1, epoch after epoch, each checked
    before its step uses it (none is read past ``end``):
    yields (columns, row numbers or None, b). A model with free locals needs the rows'
    numbers; b is this batch's own size (a ragged last batch gets its own N/b)."""
    from .model import ROW_INDEX
    from .problem import check_batch

    model = problem.model
    if first_step >= end:
        return
    for step, batch in enumerate(epochs(problem.stream), start=first_step):
        where = f"streamed batch at step {step}"
        cols = check_batch(model, batch, where=where, need_rows=bool(model.free_locals),
                           total_size=problem.total_size)
        rows = cols.pop(ROW_INDEX, None)
        b = next(iter(cols.values())).shape[0]
        if b == 0:
            raise ValueError(f"{where} has no rows")
        if b > problem.total_size:
            raise ValueError(f"{where} has {b} rows, more than total_size={problem.total_size}")
        yield cols, rows, b
        if step + 1 >= end:
            return
