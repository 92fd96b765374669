"""The model-spec error, in a module that imports nothing from klqp.

``ModelError`` is raised by klqp/distributions.py (a bad constant parameter) and by
klqp/model.py (a bad declaration or a bad saved spec); keeping it here lets the two
import it without importing each other. Its public home stays ``klqp.model``
(``from klqp.model import ModelError``, ``kq.ModelError``), and it says so in
tracebacks and reprs.
"""

from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(ValueError):
    """A model spec that cannot be right, raised when the offending line runs."""


ModelError.__module__ = "klqp.model"  # where users import it from (and where pickle finds it)
