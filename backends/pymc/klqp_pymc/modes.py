"""PyTensor compile modes the backend offers (``backend_options={"mode": ...}``).

"c" is PyTensor's C virtual machine (fast steps; the first compile of a graph costs tens
of seconds on a fresh machine, later ones hit PyTensor's on-disk module cache), "jax" jits
the graph with JAX (compiles in seconds, steps 1-3x slower on CPU), "numba" compiles with
Numba (often the fastest steps, but its compile grows with the number of distinct ops: up
to minutes for neural-network graphs). The defaults follow what was measured on this
project's 2-core CI machine; see the package README. $KLQP_PYMC_MODE overrides both."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

from pymc.pytensorf import resolve_backend_compile_kwargs

__all__ = ["MODES", "DEFAULT_MODE", "compile_kwargs", "check_mode", "quiet_int64_truncation"]

MODES = ("c", "numba", "jax")


def _jax_available() -> bool:
    """Whether JAX is installed (not imported here: that costs a second). PyTensor's JAX
    linker turns on JAX's float64 itself when floatX is float64."""
    return importlib.util.find_spec("jax") is not None


# A fit's step is a large graph: C compiled the flagship's in ~100 s on a fresh machine
# and JAX in ~6 s; a fit to convergence takes a few hundred steps and kq.compile a few
# calls, so compile time dominates: JAX is the default of both when it is installed.
DEFAULT_MODE = "jax" if _jax_available() else "c"
ENV_VAR = "KLQP_PYMC_MODE"  # overrides the default, e.g. for a test run


def check_mode(mode, default: str = DEFAULT_MODE) -> str:
    """The mode to use: ``mode`` if given, else $KLQP_PYMC_MODE, else ``default``."""
    source = "backend_options mode"
    if mode is None:
        source, mode = f"${ENV_VAR}", os.environ.get(ENV_VAR) or default
    if mode not in MODES:
        raise ValueError(f"{source}={mode!r} is not a PyTensor mode the pymc backend offers; "
                         f"use one of {list(MODES)}, e.g. backend_options={{'mode': 'c'}}")
    return mode


# Linear-algebra rewrites that query structure assumptions node after node: 4-8 % of a
# fit's compile on the test models, whose numbers are bitwise the same without them.
SKIPPED_REWRITES = ("dot_diag_to_elemwise", "selection_dot_to_indexing",
                    "useless_symmetric_transpose")


def compile_kwargs(mode: str) -> dict:
    """Keyword arguments for ``pymc.pytensorf.compile`` (PyMC's own backend shortcut,
    less ``SKIPPED_REWRITES``). Inputs may go unused (a model without locals never reads
    the row indices)."""
    kwargs = resolve_backend_compile_kwargs(mode, None)
    return {**kwargs, "mode": kwargs["mode"].excluding(*SKIPPED_REWRITES),
            "on_unused_input": "ignore"}


@contextlib.contextmanager
def quiet_int64_truncation():
    """Silence JAX's warning that int64 is truncated to int32 without x64 (float32 runs of
    the "jax" mode): PyMC's graphs cast row indices and counts to int64, and int32 holds
    them exactly below 2**31 rows. JAX warns once per trace, i.e. on a function's first
    call; nothing else is filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Explicitly requested dtype int64",
                                category=UserWarning)
        yield
