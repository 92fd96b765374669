"""Backends are plug-ins, found through the ``klqp.backends`` entry-point group.

A backend package declares, in its pyproject.toml::

    [project.entry-points."klqp.backends"]
    mybackend = "my_package:MyBackend"

and ``MyBackend()`` must offer ``compile(problem, **options)`` (returning an object
with ``init_params``, ``loss``, ``grad`` and ``terms``) and
``fit(problem, config, **options)`` (returning a :class:`klqp.results.FitResult`).
``problem`` is a validated :class:`klqp.problem.Problem`; nothing in it is
backend-specific.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from numbers import Integral
from typing import Any

__all__ = ["available", "get", "register", "check_one_device"]

_REGISTERED: dict[str, Any] = {}
_LOADED: dict[str, Any] = {}


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group="klqp.backends")}


def available() -> list[str]:
    """Names of the installed backends (entry points plus :func:`register`-ed ones)."""
    return sorted(set(_entry_points()) | set(_REGISTERED))


def register(name: str, backend: Any) -> None:
    """Register a backend object at run time (tests, or a backend not installed as a package)."""
    _REGISTERED[name] = backend
    _LOADED.pop(name, None)


def get(name: str) -> Any:
    """The backend called ``name``; an unknown name fails with the installed ones listed."""
    if name in _LOADED:
        return _LOADED[name]
    if name in _REGISTERED:
        backend = _REGISTERED[name]
    else:
        eps = _entry_points()
        if name not in eps:
            have = available()
            raise ValueError(
                f"backend={name!r} is not installed; installed backends: {have or 'none'}. "
                "Install one, e.g. `pip install -e backends/numpyro` from the klqp repository.")
        backend = eps[name].load()
    _LOADED[name] = backend() if isinstance(backend, type) else backend
    return _LOADED[name]


def check_one_device(devices, why: str) -> None:
    """Refuse ``backend_options["devices"]`` other than 1, a list of one device or left
    out, for a backend (or a call) that runs on one device; ``why`` says why and what to
    do instead.

    >>> check_one_device(1, "")
    >>> check_one_device(2, "this backend runs on one device")
    Traceback (most recent call last):
    ValueError: backend_options['devices']=2: this backend runs on one device
    """
    if devices is None or (isinstance(devices, (list, tuple)) and len(devices) == 1) or (
            isinstance(devices, Integral) and not isinstance(devices, bool) and devices == 1):
        return
    raise ValueError(f"backend_options['devices']={devices!r}: {why}")
