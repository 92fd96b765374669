"""Model specs as JSON: save a ``kq.Model`` as plain data and load it back.

``model.to_json()`` writes ``model.to_dict()`` as strict JSON; ``kq.Model.from_json(text)``
and ``kq.Model.from_dict(d)`` rebuild the model. The file carries a schema version
(``"klqp_spec": 1``).

>>> import klqp as kq
>>> with kq.Model("m", total_size=100) as m:
...     x = kq.Data("x")
...     w = kq.Global("w", kq.Normal(0.0, 1.0))
...     kq.Observed("y", kq.Normal(w * x, kq.exp(-1.0)))
>>> text = m.to_json()
>>> text[:30]
'{"klqp_spec": 1, "name": "m", '
>>> again = kq.Model.from_json(text)
>>> again.to_dict() == m.to_dict(), again.total_size
(True, 100)

Loading evaluates nothing from the file: operator names, distribution families and
variable roles go through the explicit tables ``OPERATORS``, ``FAMILIES`` and ``ROLES``,
and anything else is refused with a ``kq.ModelError`` that names where in the file it is
(``variables[3].dist.params.mu.op``), what it holds and what would fix it. The variables
are declared again through ``kq.Data``, ``kq.Global``, ``kq.Local``, ``kq.Observed`` and
``kq.Param``, so a loaded spec passes the same checks as a hand-written one.

The code is in klqp/model.py, next to the ``Model`` it builds (so that ``Model.to_json``,
``from_json`` and ``from_dict`` need no import of this module, and the import graph of
klqp's modules has no circle); this module is its public name.
"""

from __future__ import annotations

from .model import (FAMILIES, OPERATORS, ROLES, SPEC_VERSION, dist_from_dict, dumps,
                    expr_from_dict, from_dict, loads)

__all__ = ["SPEC_VERSION", "OPERATORS", "FAMILIES", "ROLES", "dumps", "loads", "from_dict",
           "expr_from_dict", "dist_from_dict"]
