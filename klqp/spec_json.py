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

This module imports no klqp.model (which imports it: ``Model.to_dict`` writes
``SPEC_VERSION``, and ``Model``'s JSON methods call the codec). The model class and the
declaration functions reach the loader as arguments: ``model_from_dict(d, Model,
{"data": Data, ...})``. klqp/model.py passes its own in ``kq.Model.from_dict`` /
``from_json`` and in its one-argument ``klqp.model.from_dict(d)`` and ``loads(text)``.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any, Callable, Mapping, Optional, TypeVar

import numpy as np

from . import distributions as _d
from .distributions import Distribution
from .errors import ModelError
from .expr import _AXIS, _BINARY, _COMPARE, _ELEMENTWISE2, _JOIN, _UNARY, Expr

__all__ = ["SPEC_VERSION", "OPERATORS", "FAMILIES", "ROLES", "dumps", "parse",
           "model_from_dict", "expr_from_dict", "dist_from_dict"]

#: The version of the JSON layout this module writes and reads (the ``"klqp_spec"`` key).
SPEC_VERSION = 1

M = TypeVar("M")  # the model class the caller hands to model_from_dict


# -- checks on plain values ------------------------------------------------------------
def _fail(path: str, message: str) -> ModelError:
    """The error for the item at ``path`` (returned, so callers ``raise`` it); its
    ``spec_path`` attribute is ``path``.

    >>> err = _fail("variables[0].shape", "must be a list")
    >>> print(err)
    spec variables[0].shape: must be a list
    >>> err.spec_path
    'variables[0].shape'
    """
    err = ModelError(f"spec {path}: {message}")
    err.spec_path = path
    return err


def _show(value, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error quotes what a file holds).

    >>> _show("x")
    "'x'"
    >>> _show(list(range(100)), 20)
    '[0, 1, 2, 3, 4, 5, …'
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_int(value) -> bool:
    """A JSON integer (``true``/``false`` are not numbers here).

    >>> _is_int(3), _is_int(True), _is_int(3.0)
    (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite JSON number, integer or not (never a boolean).

    >>> _is_number(0.5), _is_number(2), _is_number(False), _is_number(float("nan"))
    (True, True, False, False)
    """
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _object(value, path: str) -> dict:
    """``value`` if it is a JSON object, else a clear error.

    >>> _object([1], "variables[0]")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec variables[0]: expected a JSON object ({...}), got [1]
    """
    if not isinstance(value, dict):
        raise _fail(path, f"expected a JSON object ({{...}}), got {_show(value)}")
    return value


def _keys(obj: dict, path: str, required=(), optional=()) -> None:
    """Refuse an object with a missing required key or a key it cannot have (a typo).

    >>> _keys({"name": "x", "shap": [2]}, "variables[0]", ("name",), ("shape",))
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec variables[0]: unknown key 'shap'; allowed keys: name, shape
    """
    for key in required:
        if key not in obj:
            raise _fail(path, f"missing key {key!r}; add it (keys: {', '.join(required)} "
                              f"are required here)")
    allowed = tuple(required) + tuple(optional)
    for key in obj:
        if key not in allowed:
            raise _fail(path, f"unknown key {key!r}; allowed keys: {', '.join(allowed)}")


def _shape(value, path: str) -> tuple:
    """A shape: a list of non-negative integers.

    >>> _shape([2, 3], "variables[1].shape")
    (2, 3)
    >>> _shape("3", "variables[1].shape")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec variables[1].shape: '3' is not a shape; write a list ...
    """
    if not isinstance(value, list) or not all(_is_int(s) and s >= 0 for s in value):
        raise _fail(path, f"{_show(value)} is not a shape; write a list of non-negative integers "
                          "such as [3] or [] for a scalar")
    return tuple(value)


def _array(value, path: str):
    """A number, or a rectangular nested list of numbers (as a float array).

    >>> _array([[1, 2], [3, 4]], "init").shape
    (2, 2)
    >>> _array([1, [2]], "init")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec init: [1, [2]] is not a number or a rectangular list of numbers
    """
    if _is_number(value):
        return value

    def numbers_only(v) -> bool:
        return _is_number(v) if not isinstance(v, list) else all(numbers_only(e) for e in v)

    if isinstance(value, list) and numbers_only(value):
        try:
            return np.asarray(value, dtype=float)
        except ValueError:
            pass
    raise _fail(path, f"{_show(value)} is not a number or a rectangular list of numbers")


# -- expressions -----------------------------------------------------------------------
def _int_attr(value, path: str) -> int:
    """An integer attribute (``axis``, ``at``)."""
    if not _is_int(value):
        raise _fail(path, f"{_show(value)} must be an integer")
    return value


def _shape_attr(value, path: str) -> tuple:
    if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 1 for v in value):
        raise _fail(path, f"expected a list of positive integers (a shape), got {_show(value)}")
    return tuple(int(v) for v in value)


def _optional_int_attr(value, path: str):
    """An integer or null attribute (a slice's ``start`` and ``stop``)."""
    return None if value is None else _int_attr(value, path)


def _name_attr(value, path: str) -> str:
    """A variable's name (checked against the model when the variable reading it is
    declared)."""
    if not isinstance(value, str):
        raise _fail(path, f"{_show(value)} must be a string (a variable's name)")
    return value


#: Every expression operator: name -> (number of arguments, {attribute: check}).
#: The number is an int, a tuple of allowed counts, or None for "one or more".
OPERATORS: dict[str, tuple[Any, dict[str, Callable]]] = {
    **{op: (2, {}) for op in _BINARY},
    **{op: (1, {}) for op in _UNARY},
    "var": (0, {"name": _name_attr}),
    "const": (0, {"value": _array}),
    # w[group] (2 args) or x[..., k] (1 arg, at=k); axis and rank: see klqp.expr._axis_key
    "index": ((1, 2), {"at": _int_attr, "axis": _int_attr, "rank": _int_attr}),
    "slice": (1, {"start": _optional_int_attr, "stop": _optional_int_attr, "axis": _int_attr,
                  "rank": _int_attr}),
    "reshape": (1, {"shape": _shape_attr}),
    "where": (3, {}),
    **{op: (2, {}) for op in _COMPARE},                     # greater, less, ...
    **{op: (1, {"axis": _int_attr}) for op in _AXIS},      # sum, mean, logsumexp, ...
    **{op: (2, {}) for op in _ELEMENTWISE2},                # maximum, minimum
    **{op: (None, {"axis": _int_attr}) for op in _JOIN},    # concat, stack
}


def _check_arity(op: str, n_args: int, path: str) -> None:
    """Refuse a node with the wrong number of arguments for its operator."""
    want = OPERATORS[op][0]
    ok = n_args >= 1 if want is None else (n_args in want if isinstance(want, tuple)
                                           else n_args == want)
    if not ok:
        said = ("one or more" if want is None else
                " or ".join(map(str, want)) if isinstance(want, tuple) else str(want))
        raise _fail(f"{path}.args", f"operator {op!r} takes {said} argument(s), got {n_args}")


#: Attributes a node may leave out (their default: the last axis, no rank check).
OPTIONAL_ATTRS = {"index": ("axis", "rank"), "slice": ("axis", "rank")}


def _attrs(op: str, n_args: int, attrs: dict, path: str) -> tuple:
    """The node's attributes, checked and in the order the expression builders use."""
    checks = OPERATORS[op][1]
    if op == "index":  # x[..., k] carries at=k; w[group] carries nothing
        checks = checks if n_args == 1 else {}
    for key in attrs:
        if key not in checks:
            allowed = ", ".join(checks) or "none"
            raise _fail(f"{path}.attrs", f"operator {op!r} has no attribute {_show(key)} "
                                         f"(its attributes: {allowed})")
    out = []
    for key, check in checks.items():
        if key not in attrs:
            if key in OPTIONAL_ATTRS.get(op, ()):
                continue
            raise _fail(f"{path}.attrs", f"operator {op!r} needs attribute {key!r}")
        out.append((key, check(attrs[key], f"{path}.attrs.{key}")))
    return tuple(out)


def _intern(cache: dict, op: str, args: tuple, attrs: tuple) -> Expr:
    """One node per distinct subexpression, so a tree the JSON spells out twice (an
    encoder's loc and scale both read the same net) is shared again after loading.

    >>> cache = {}
    >>> a = _intern(cache, "var", (), (("name", "x"),))
    >>> a is _intern(cache, "var", (), (("name", "x"),))
    True
    """
    key = (op, tuple(id(a) for a in args),
           json.dumps([[k, np.asarray(v).tolist()] for k, v in attrs]))
    if key not in cache:
        cache[key] = Expr(op, args, attrs)
    return cache[key]


def expr_from_dict(d, path: str = "expr", cache=None) -> Expr:
    """Rebuild an expression from ``Expr.to_dict()``'s plain data; every operator name
    goes through ``OPERATORS``.

    >>> import klqp as kq
    >>> from klqp.expr import Expr
    >>> x = Expr("var", (), (("name", "x"),))
    >>> e = kq.softplus(x[..., 1:3]).sum(-1) * 2.0
    >>> expr_from_dict(e.to_dict())
    (sum(softplus(x[..., 1:3]), axis=-1) * 2.0)
    >>> expr_from_dict({"op": "__import__('os').system('ls')"}, "params.mu")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec params.mu.op: unknown operator "__import__('os').system('ls')"; ...
    """
    cache = {} if cache is None else cache
    _keys(_object(d, path), path, ("op",), ("args", "attrs"))
    op = d["op"]
    if not isinstance(op, str) or op not in OPERATORS:
        raise _fail(f"{path}.op", f"unknown operator {_show(op)}; an expression's op is one of "
                                  f"{', '.join(sorted(OPERATORS))} (a spec's strings are "
                                  "never run as code)")
    args, attrs = d.get("args", []), d.get("attrs", {})
    if not isinstance(args, list):
        raise _fail(f"{path}.args", f"expected a list of expressions, got {_show(args)}")
    _check_arity(op, len(args), path)
    kids = tuple(expr_from_dict(a, f"{path}.args[{i}]", cache) for i, a in enumerate(args))
    return _intern(cache, op, kids, _attrs(op, len(kids), _object(attrs, f"{path}.attrs"), path))


# -- distributions ---------------------------------------------------------------------
#: Every distribution family a spec may name: family -> its constructor.
FAMILIES: dict[str, Callable[..., Distribution]] = {
    "Normal": _d.Normal, "HalfNormal": _d.HalfNormal, "LogNormal": _d.LogNormal,
    "Exponential": _d.Exponential, "Gamma": _d.Gamma, "Beta": _d.Beta,
    "StudentT": _d.StudentT, "Bernoulli": _d.Bernoulli, "Binomial": _d.Binomial,
    "Poisson": _d.Poisson, "Categorical": _d.Categorical,
    "ContinuousBernoulli": _d.ContinuousBernoulli,
    "ZeroInflatedNegativeBinomial": _d.ZeroInflatedNegativeBinomial,
    "OrderedLogistic": _d.OrderedLogistic,
    "HalfCauchy": _d.HalfCauchy, "HalfStudentT": _d.HalfStudentT, "Cauchy": _d.Cauchy,
    "Laplace": _d.Laplace, "Uniform": _d.Uniform, "MvNormal": _d.MvNormal, "Dirichlet": _d.Dirichlet, "LKJCholesky": _d.LKJCholesky, "Weibull": _d.Weibull, "NegativeBinomial": _d.NegativeBinomial,
    "ZeroInflatedPoisson": _d.ZeroInflatedPoisson, "Mixture": _d.Mixture,
}


def dist_from_dict(d, path: str = "dist", cache=None) -> Distribution:
    """Rebuild a distribution from ``Distribution.to_dict()``'s plain data, through its
    family's constructor (so ``Bernoulli`` still needs exactly one of probs/logits).

    >>> import klqp as kq
    >>> dist_from_dict(kq.Gamma(2.0, 3.0).to_dict())
    Gamma(alpha=2.0, beta=3.0)
    >>> dist_from_dict({"family": "Gauss", "params": {}}, "variables[1].dist")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec variables[1].dist.family: unknown distribution family 'Gauss'; ...
    """
    _object(d, path)
    family = d.get("family")
    _keys(d, path, ("family", "params") + (("components",) if family == "Mixture" else ()),
          ("support",))
    if not isinstance(family, str) or family not in FAMILIES:
        raise _fail(f"{path}.family", f"unknown distribution family {_show(family)}; use one of "
                                      f"{', '.join(FAMILIES)}")
    if family == "Mixture":
        parts = d["components"]
        if not isinstance(parts, list):
            raise _fail(f"{path}.components", f"{_show(parts)} must be a list of distributions")
        params = _object(d["params"], f"{path}.params")
        _keys(params, f"{path}.params", ("w",))
        w = expr_from_dict(params["w"], f"{path}.params.w", cache)
        components = [dist_from_dict(c, f"{path}.components[{i}]", cache)
                      for i, c in enumerate(parts)]
        try:
            return _d.Mixture(w, components)
        except (TypeError, ValueError) as err:  # ModelError is a ValueError
            raise _fail(f"{path}.components", str(err)) from None
    make = FAMILIES[family]
    names = list(inspect.signature(make).parameters)
    params = _object(d["params"], f"{path}.params")
    for key in params:
        if key not in names:
            raise _fail(f"{path}.params", f"{family} has no parameter {_show(key)}; its parameters "
                                          f"are {', '.join(names)}")
    kwargs = {k: expr_from_dict(v, f"{path}.params.{k}", cache) for k, v in params.items()}
    try:
        dist = make(**kwargs)
    except (TypeError, ValueError) as err:
        raise _fail(f"{path}.params", str(err)) from None
    if "support" in d and d["support"] != dist.support:
        raise _fail(f"{path}.support", f"{_show(d['support'])} but {family}'s support is "
                                       f"{dist.support!r}; drop the key or write {dist.support!r}")
    return dist


# -- variables -------------------------------------------------------------------------
# Each role's reader checks its saved entry and declares the variable with ``make``, that
# role's declaration function (kq.Data, kq.Global, ...: the caller's ``declare[role]``),
# inside ``with model:``; ``model`` is the model being rebuilt.
def _float_dtype(entry: dict, path: str, role: str) -> None:
    """Latents and params hold floats: a dtype other than "float" is a mistake."""
    if entry.get("dtype", "float") != "float":
        raise _fail(f"{path}.dtype", f"{_show(entry['dtype'])}, but a {role} variable is "
                                     "'float'; drop the key or write 'float'")


def _declare_data(entry: dict, path: str, cache: dict, make: Callable, model) -> None:
    """``kq.Data`` from a saved ``"data"`` entry."""
    _keys(entry, path, ("name", "role"), ("shape", "dtype"))
    make(entry["name"], _shape(entry.get("shape", []), f"{path}.shape"),
         entry.get("dtype", "float"))


def _declare_global(entry: dict, path: str, cache: dict, make: Callable, model) -> None:
    """``kq.Global`` from a saved ``"global"`` entry."""
    _keys(entry, path, ("name", "role", "dist"), ("shape", "dtype", "transform"))
    _float_dtype(entry, path, "global")
    shape = _shape(entry["shape"], f"{path}.shape") if "shape" in entry else None
    make(entry["name"], dist_from_dict(entry["dist"], f"{path}.dist", cache), shape,
         transform=_transform(entry, path))


def _transform(entry: dict, path: str):
    """A latent's saved ``transform`` (only "ordered"), or None."""
    value = entry.get("transform")
    if value is not None and value != "ordered":
        raise _fail(f"{path}.transform", f"{_show(value)}; the one transform is \"ordered\"")
    return value


def _declare_local(entry: dict, path: str, cache: dict, make: Callable, model) -> None:
    """``kq.Local`` from a saved ``"local"`` entry; ``encoder`` holds the amortized
    q's ``loc`` and ``scale`` expressions."""
    _keys(entry, path, ("name", "role", "dist"), ("shape", "dtype", "encoder", "transform"))
    _float_dtype(entry, path, "local")
    shape = _shape(entry["shape"], f"{path}.shape") if "shape" in entry else None
    dist = dist_from_dict(entry["dist"], f"{path}.dist", cache)
    encoder = None
    if "encoder" in entry:
        enc = _object(entry["encoder"], f"{path}.encoder")
        _keys(enc, f"{path}.encoder", ("loc", "scale"))
        encoder = tuple(expr_from_dict(enc[k], f"{path}.encoder.{k}", cache)
                        for k in ("loc", "scale"))
    make(entry["name"], dist, shape, encoder=encoder, transform=_transform(entry, path))


def _declare_observed(entry: dict, path: str, cache: dict, make: Callable, model) -> None:
    """``kq.Observed`` from a saved ``"observed"`` entry. Its shape and dtype follow from
    the distribution; saved ones must agree."""
    _keys(entry, path, ("name", "role", "dist"), ("shape", "dtype"))
    make(entry["name"], dist_from_dict(entry["dist"], f"{path}.dist", cache))
    spec = model.vars[entry["name"]]
    if "shape" in entry and _shape(entry["shape"], f"{path}.shape") != spec.shape:
        raise _fail(f"{path}.shape", f"{_show(entry['shape'])}, but Observed {spec.name!r}'s "
                                     f"distribution gives rows of shape {list(spec.shape)}; "
                                     "fix the distribution's parameters or the shape")
    if "dtype" in entry and entry["dtype"] != spec.dtype:
        raise _fail(f"{path}.dtype", f"{_show(entry['dtype'])}, but Observed {spec.name!r}'s "
                                     f"{spec.dist.family} gives {spec.dtype!r}; "
                                     f"write {spec.dtype!r}")


def _declare_param(entry: dict, path: str, cache: dict, make: Callable, model) -> None:
    """``kq.Param`` from a saved ``"param"`` entry; ``init`` is "glorot", "zeros", a
    number or a (nested) list."""
    _keys(entry, path, ("name", "role"), ("shape", "dtype", "init"))
    _float_dtype(entry, path, "param")
    init = entry.get("init", "glorot")
    if not isinstance(init, str):
        init = _array(init, f"{path}.init")
    make(entry["name"], _shape(entry.get("shape", []), f"{path}.shape"), init)


def _declare_deterministic(entry: dict, path: str, cache: dict, make: Callable, model) -> None:
    """``kq.Deterministic`` (or ``kq.Potential``) from a saved ``"deterministic"``
    (``"potential"``) entry; ``expr`` is its expression, the shape follows from it."""
    _keys(entry, path, ("name", "role", "expr"), ("shape", "dtype"))
    make(entry["name"], expr_from_dict(entry["expr"], f"{path}.expr", cache))


#: Every variable role a spec may hold: role -> how to declare it again, called as
#: ``(entry, path, cache, make, model)`` with ``make`` the role's declaration function.
ROLES: dict[str, Callable[[dict, str, dict, Callable, Any], None]] = {
    "data": _declare_data, "global": _declare_global, "local": _declare_local,
    "observed": _declare_observed, "param": _declare_param,
    "deterministic": _declare_deterministic, "potential": _declare_deterministic,
}


def _declare(entry, path: str, cache: dict, declare: Mapping[str, Callable], model) -> None:
    """Declare one saved variable in ``model`` (the current one); a declaration error (a
    bad shape, an unknown name) is the hand-written one, prefixed with where it is."""
    entry = _object(entry, path)
    if "role" not in entry:
        raise _fail(path, f"missing key 'role'; add one of {', '.join(ROLES)}")
    role = entry["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise _fail(f"{path}.role", f"unknown role {_show(role)}; use one of {', '.join(ROLES)}")
    if not isinstance(entry.get("name"), str):
        raise _fail(f"{path}.name", f"{_show(entry.get('name'))} must be a string (the "
                                    "variable's name)")
    try:
        ROLES[role](entry, path, cache, declare[role], model)
    except ModelError as err:
        if "spec_path" in vars(err):  # raised by this module: it already says where
            raise
        raise _fail(path, str(err)) from None
    except (TypeError, ValueError, IndexError) as err:  # e.g. an index by a float
        raise _fail(path, f"{role} {entry['name']!r}: {err}") from None


# -- the whole spec --------------------------------------------------------------------
def _check_version(d: dict) -> None:
    """Refuse a dict that carries no ``klqp_spec`` version, or one this klqp cannot read.

    >>> _check_version({"klqp_spec": 2})
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec klqp_spec: version 2 is not one this klqp reads (it reads 1); ...
    """
    if "klqp_spec" not in d:
        raise _fail("klqp_spec", "missing: this is not a saved klqp spec (the top level needs "
                                 f'"klqp_spec": {SPEC_VERSION}); save one with model.to_json()')
    version = d["klqp_spec"]
    if not _is_int(version) or version != SPEC_VERSION:
        raise _fail("klqp_spec", f"version {_show(version)} is not one this klqp reads (it reads "
                                 f"{SPEC_VERSION}); save the spec again with this klqp's "
                                 "model.to_json(), or install the klqp that wrote it")


def model_from_dict(d, model_class: Callable[[str, Optional[int]], M],
                    declare: Mapping[str, Callable]) -> M:
    """Rebuild a model from ``Model.to_dict()``'s plain data: ``model_class(name,
    total_size)`` makes it, and inside ``with model:`` each variable is declared by
    ``declare[role]`` (``{"data": kq.Data, "global": kq.Global, ...}``, one per role of
    ``ROLES``). ``kq.Model.from_dict(d)`` is this with klqp.model's own.

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     mu = kq.Global("mu", kq.Normal(0.0, 10.0))
    ...     kq.Observed("y", kq.Normal(mu, 1.0))
    >>> declare = {"data": kq.Data, "global": kq.Global, "local": kq.Local,
    ...            "observed": kq.Observed, "param": kq.Param,
    ...            "deterministic": kq.Deterministic, "potential": kq.Potential}
    >>> model_from_dict(m.to_dict(), kq.Model, declare)
    Model('m', total_size=None)
      global   mu ~ Normal(mu=0.0, sigma=10.0)  shape=()
      observed y ~ Normal(mu=mu, sigma=1.0)  shape=(rows,)
    """
    missing = [role for role in ROLES if role not in declare]
    if missing:
        raise TypeError(f"model_from_dict: declare= has no declaration function for the "
                        f"role(s) {missing}; pass one for each of {', '.join(ROLES)}")
    _object(d, "(top level)")
    _check_version(d)
    _keys(d, "(top level)", ("klqp_spec", "variables"), ("name", "total_size"))
    name, total = d.get("name", "model"), d.get("total_size")
    if not isinstance(name, str):
        raise _fail("name", f"{_show(name)} must be a string (the model's name)")
    if total is not None and not _is_int(total):
        raise _fail("total_size", f"{_show(total)} must be an integer (the number of rows N) "
                                  "or null")
    variables = d["variables"]
    if not isinstance(variables, list):
        raise _fail("variables", f"expected a list of variables, got {_show(variables)}")
    try:
        model = model_class(name, total)
    except ModelError as err:  # total_size < 1
        raise _fail("total_size", str(err)) from None
    cache: dict = {}
    with model:  # the declaration functions declare into the model `with` made current
        for i, entry in enumerate(variables):
            _declare(entry, f"variables[{i}]", cache, declare, model)
    return model


def _refuse_constant(token: str):
    """``json.loads``'s hook for NaN and Infinity, which strict JSON has no spelling for."""
    raise ValueError(f"{token} is not a JSON number")


def parse(text) -> Any:
    """The plain data in JSON text written by ``model.to_json()``, for ``model_from_dict``
    (``kq.Model.from_json`` is the two together); only strict JSON is read.

    >>> parse('{"klqp_spec": 1, "variables": []}')
    {'klqp_spec': 1, 'variables': []}
    >>> parse("name = 'm'")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec (text): not JSON (Expecting value: line 1 column 1 (char 0)); ...
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise _fail("(text)", f"expected JSON text (a str), got {type(text).__name__}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)  # bytes: UTF-8
    except (ValueError, RecursionError) as err:
        raise _fail("(text)", f"not JSON ({err}); a spec file is the text model.to_json() "
                              "writes") from None


def _nonfinite_path(obj, path: str = ""):
    """Where in plain data a NaN or infinity sits (None if nowhere).

    >>> _nonfinite_path({"variables": [{"init": [0.0, float("inf")]}]})
    'variables[0].init[1]'
    """
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path
    items = (obj.items() if isinstance(obj, dict) else
             enumerate(obj) if isinstance(obj, list) else ())
    for k, v in items:
        found = _nonfinite_path(v, f"{path}[{k}]" if isinstance(k, int) else
                                (f"{path}.{k}" if path else k))
        if found is not None:
            return found
    return None


def dumps(model, indent=None) -> str:
    """``model.to_dict()`` as strict JSON text (``model.to_json``); ``model`` is a kq.Model.

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     b = kq.Param("b", (2,), init=[0.5, -1.0])
    >>> print(dumps(m, indent=None))
    {"klqp_spec": 1, "name": "m", "total_size": null, "variables": [{"name": "b", "role": "param", "shape": [2], "dtype": "float", "init": [0.5, -1.0]}]}
    """
    d = model.to_dict()
    where = _nonfinite_path(d)
    if where is not None:
        raise ModelError(f"model {model.name!r}: {where} is NaN or infinite, which JSON cannot "
                         "carry; use a finite number there")
    return json.dumps(d, indent=indent, allow_nan=False)
