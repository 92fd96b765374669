"""Compiled programs kept across fits in one process, for every backend.

Compiling a fit's step is most of a short fit's time (JAX traces and compiles the
chunk, PyTensor builds and compiles its graph). A second ``kq.fit`` of a model with
the same structure (another seed, a resume, new data of the same shapes, a model
declared again) reuses the program compiled for the first: a backend asks this cache
with a key that holds everything its compiled program reads as a constant, and the
model's structure as ``structure_key``. Data, a ``kq.Shared`` weight's value, the seed
and the state are arguments of the program, not part of the key.

A program is taken out of the cache while a fit runs, so two fits at once never share
one, and handed back when the fit ends. The cache holds the last ``size`` programs.

>>> cache = ProgramCache(size=2)
>>> cache.take(("m", 1)) is None            # nothing compiled yet
True
>>> cache.give_back(("m", 1), "program for m, b=1")
>>> cache.take(("m", 1))
'program for m, b=1'
>>> cache.take(("m", 1)) is None            # taken: a second fit at once compiles its own
True
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

__all__ = ["ProgramCache", "structure_key", "clear"]


def structure_key(model) -> Optional[str]:
    """The model's structure as text (its JSON spec: every variable, distribution,
    constant and expression; Deterministics left out, the objective never reads them),
    or None when the model cannot be written as JSON; such a model's fits are not cached.
    Two models with equal keys lower to the same program.

    >>> import klqp as kq
    >>> def declare():
    ...     with kq.Model("m") as m:
    ...         kq.Global("mu", kq.Normal(0.0, 1.0))
    ...     return m
    >>> structure_key(declare()) == structure_key(declare())
    True
    """
    try:
        return json.dumps(model.objective_dict(), allow_nan=False)
    except Exception:  # noqa: BLE001  a model JSON cannot hold (NaN constants, ...)
        return None


class ProgramCache:
    """The last ``size`` compiled programs, each under its key (compared with ``==``)."""

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: list[tuple[Any, Any]] = []  # oldest first
        self._lock = threading.Lock()

    def take(self, key) -> Any:
        """The program compiled for ``key``, taken out of the cache; None if there is none."""
        with self._lock:
            for i, (k, program) in enumerate(self._entries):
                if k == key:
                    del self._entries[i]
                    return program
        return None

    def give_back(self, key, program) -> None:
        """Keep ``program`` under ``key`` (the newest); the oldest beyond ``size`` go."""
        with self._lock:
            self._entries.append((key, program))
            del self._entries[:-self.size or None]

    def take_for(self, problem, key) -> Any:
        """``take`` under (the model's ``structure_key``, ``key``), adopted for ``problem``
        (``program.adopt(problem)``: a problem of the same structure, other data); None
        for a model that JSON cannot hold (never cached)."""
        structure = structure_key(problem.model)
        program = None if structure is None else self.take((structure, key))
        return None if program is None else program.adopt(problem)

    def give_back_for(self, problem, key, program) -> None:
        """``give_back`` under (the model's ``structure_key``, ``key``), if it has one,
        released first (``program.release()``: a waiting program holds no data)."""
        structure = structure_key(problem.model)
        if structure is not None:
            self.give_back((structure, key), program.release())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Adoptable:
    """What a cached program needs when all it holds of a fit is ``problem``."""

    problem: Any = None

    def adopt(self, problem) -> "Adoptable":
        self.problem = problem
        return self

    def release(self) -> "Adoptable":
        self.problem = None  # neither the model nor the data stay alive in the cache
        return self


#: Every backend's cache, so ``clear`` frees them all.
_CACHES: list[ProgramCache] = []


def backend_cache(size: int = 8) -> ProgramCache:
    """A new cache for a backend's compiled programs (``klqp.cache.clear`` clears it)."""
    cache = ProgramCache(size)
    _CACHES.append(cache)
    return cache


def clear() -> None:
    """Forget every compiled program kept across fits (and the data they hold)."""
    for cache in _CACHES:
        cache.clear()
