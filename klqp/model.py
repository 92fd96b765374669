"""The model spec: data columns, global and local latents, observations.

A ``kq.Model`` is plain data. Declaring variables inside ``with kq.Model(...)``
records them in order; nothing is compiled and no backend is imported. Shapes are
checked as each variable is declared, so a mistake points at the line that made it.

>>> import klqp as kq
>>> with kq.Model("hierarchical") as model:
...     x = kq.Data("x")
...     theta = kq.Global("theta", kq.Normal(0.0, 1.0))
...     sigma = kq.Global("sigma", kq.HalfNormal(1.0))
...     z = kq.Local("z", kq.Normal(theta * x, 0.7))
...     kq.Observed("y", kq.Normal(z, sigma))
>>> [v.name for v in model.latents]
['theta', 'sigma', 'z']
"""

from __future__ import annotations

import inspect
import json
import keyword
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from . import distributions as _d
from .distributions import Distribution
from .errors import ModelError
from .expr import _BINARY, _UNARY, Expr, NumpyOps, evaluate, variables_in

__all__ = ["Model", "Data", "Global", "Local", "Observed", "Param", "column", "VarSpec",
           "ModelError", "ROW_INDEX", "current_model"]

#: Key of a streamed batch's row numbers (0..N-1), needed when a model has Local latents.
ROW_INDEX = "row_index"

_DUMMY_ROWS = 3  # shape checks evaluate parameters on this many fake rows
_DUMMY_VALUE = {"real": 0.5, "positive": 1.0, "unit_interval": 0.5}


@dataclass(frozen=True)
class VarSpec:
    """One declared variable.

    role: "data" (a per-row input column), "global" (one copy, prior + q),
    "local" (one copy per row, prior + q), "observed" (per-row likelihood),
    "param" (a point parameter: no prior, optimized).
    shape: the variable's own shape; for per-row roles the shape of ONE row.
    encoder: for an amortized local, (loc, scale) expressions of the row's columns.
    init: for a param, how to initialise it ("glorot", "zeros", a number or an array).
    """

    name: str
    role: str
    shape: tuple
    dist: Optional[Distribution] = None
    dtype: str = "float"
    encoder: Optional[tuple] = None
    init: Any = None

    @property
    def amortized(self) -> bool:
        return self.encoder is not None

    @property
    def per_row(self) -> bool:
        return self.role in ("data", "local", "observed")

    @property
    def support(self) -> str:
        return self.dist.support if self.dist is not None else "real"

    def to_dict(self) -> dict:
        d = {"name": self.name, "role": self.role, "shape": [int(s) for s in self.shape],
             "dtype": self.dtype}
        if self.dist is not None:
            d["dist"] = self.dist.to_dict()
        if self.encoder is not None:
            d["encoder"] = {"loc": self.encoder[0].to_dict(), "scale": self.encoder[1].to_dict()}
        if self.init is not None:
            d["init"] = np.asarray(self.init).tolist() if not isinstance(self.init, str) else self.init
        return d


_STACK: list["Model"] = []


def current_model() -> "Model":
    if not _STACK:
        raise ModelError("declare variables inside `with kq.Model(...):`")
    return _STACK[-1]


class Model:
    """A named collection of variables; ``total_size`` is N (None: the data's length)."""

    def __init__(self, name: str = "model", total_size: Optional[int] = None):
        if total_size is not None and (isinstance(total_size, (bool, np.bool_)) or not isinstance(
                total_size, (int, np.integer)) or total_size < 1):
            raise ModelError(f"Model {name!r}: total_size={total_size!r} must be a positive int "
                             "(the number of rows N) or None to use the data's length")
        self.name = name
        self.total_size = None if total_size is None else int(total_size)
        self.vars: dict[str, VarSpec] = {}

    def __enter__(self) -> "Model":
        _STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _STACK.pop()

    # -- views --------------------------------------------------------------------
    def _role(self, role: str) -> list[VarSpec]:
        return [v for v in self.vars.values() if v.role == role]

    @property
    def data_vars(self) -> list[VarSpec]:
        return self._role("data")

    @property
    def globals(self) -> list[VarSpec]:
        return self._role("global")

    @property
    def locals(self) -> list[VarSpec]:
        return self._role("local")

    @property
    def observed(self) -> list[VarSpec]:
        return self._role("observed")

    @property
    def params(self) -> list[VarSpec]:
        return self._role("param")

    @property
    def free_locals(self) -> list[VarSpec]:
        """Locals with their own q parameters per row (not amortized)."""
        return [v for v in self.locals if not v.amortized]

    @property
    def latents(self) -> list[VarSpec]:
        return [v for v in self.vars.values() if v.role in ("global", "local")]

    def __getitem__(self, name: str) -> VarSpec:
        try:
            return self.vars[name]
        except KeyError:
            raise KeyError(f"model {self.name!r} has no variable {name!r}; "
                           f"it has {list(self.vars)}") from None

    def __repr__(self) -> str:
        lines = [f"Model({self.name!r}, total_size={self.total_size})"]
        for v in self.vars.values():
            rhs = f" ~ {v.dist!r}" if v.dist is not None else ""
            shape = str(((("rows",) if v.per_row else ()) + tuple(v.shape))).replace("'", "")
            lines.append(f"  {v.role:<8} {v.name}{rhs}  shape={shape}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"klqp_spec": SPEC_VERSION, "name": self.name, "total_size": self.total_size,
                "variables": [v.to_dict() for v in self.vars.values()]}

    # -- saving and loading: the module functions dumps, loads and from_dict below ---------
    def to_json(self, indent: Optional[int] = None) -> str:
        """This spec as strict JSON text, ``to_dict()`` with its ``"klqp_spec"`` version;
        ``kq.Model.from_json`` reads it back."""
        return dumps(self, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Model":
        """The model saved as ``text`` by ``to_json``; evaluates nothing from the text and
        declares every variable again, with the usual checks (a bad spec: ModelError)."""
        return loads(text)

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
        """The model ``to_dict`` described (see ``from_json``)."""
        return from_dict(d)  # the module-level loader below, not this method

    # -- declaration ---------------------------------------------------------------
    def _add(self, spec: VarSpec) -> Expr:
        self.vars[spec.name] = spec
        return Expr("var", (), (("name", spec.name),))

    def _check_name(self, kind: str, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ModelError(f"{kind} name {name!r} must be a Python identifier, e.g. 'theta'")
        if name == ROW_INDEX:
            raise ModelError(f"{kind} name {name!r} is reserved for the row numbers of a streamed batch")
        if name in self.vars:
            raise ModelError(f"{kind} {name!r}: model {self.name!r} already has a "
                             f"{self.vars[name].role} variable with that name; pick another name")

    def dummy_value(self, spec: VarSpec, rows: int = _DUMMY_ROWS) -> np.ndarray:
        """A placeholder of the right shape (per-row variables get ``rows`` rows)."""
        shape = ((rows,) if spec.per_row else ()) + tuple(spec.shape)
        if spec.dtype == "int":
            return np.zeros(shape, dtype=int)
        return np.full(shape, _DUMMY_VALUE.get(spec.support, 0.5))

    def _param_shapes(self, kind: str, name: str, dist: Distribution) -> tuple[bool, tuple]:
        """(reads a per-row variable?, broadcast per-row/own shape of the value)."""
        if not isinstance(dist, Distribution):
            raise ModelError(f"{kind} {name!r}: expected a distribution such as kq.Normal(0, 1), "
                             f"got {dist!r}")
        reads = {n for _, e in dist.params for n in variables_in(e)}
        for n in sorted(reads):
            if n not in self.vars:
                raise ModelError(f"{kind} {name!r}: its distribution reads {n!r}, which is not "
                                 f"declared in model {self.name!r} (declared: {list(self.vars)}); "
                                 "declare it first")
            if self.vars[n].role == "observed":
                raise ModelError(f"{kind} {name!r}: reads observed variable {n!r}; observations "
                                 "are data, so declare the column with kq.Data instead")
        per_row = any(self.vars[n].per_row for n in reads)
        for pname, e in dist.params:
            self._check_indexing(kind, name, pname, e)
        # Per-row parameters are evaluated on two numbers of fake rows: a parameter whose
        # leading axis does not follow them sums, indexes or joins across the data axis.
        envs = {rows: {n: self.dummy_value(self.vars[n], rows) for n in reads}
                for rows in ((_DUMMY_ROWS, _DUMMY_ROWS + 1) if per_row else (_DUMMY_ROWS,))}
        shapes = []
        for pname, e in dist.params:
            row_wise = per_row and any(self.vars[n].per_row for n in variables_in(e))
            own = set()
            for rows, env in envs.items():
                with np.errstate(all="ignore"):
                    try:
                        value = np.asarray(evaluate(e, env, NumpyOps))
                    except (ValueError, IndexError) as err:
                        raise ModelError(f"{kind} {name!r}: parameter {pname}={e!r} has "
                                         f"inconsistent shapes ({err}); fix the shapes of the "
                                         "variables it reads") from None
                shp = value.shape
                if row_wise:
                    if shp[:1] != (rows,):
                        raise ModelError(
                            f"{kind} {name!r}: parameter {pname}={e!r} does not keep the data "
                            f"axis: for {rows} rows its value has shape {shp}, so it sums, "
                            "indexes or joins across rows (axis 0 of a per-row variable). Use "
                            "negative axes, e.g. kq.sum(x, -1) or x[..., 0], so each row reads "
                            "only its own values")
                    shp = shp[1:]
                own.add(shp)
            if len(own) > 1:
                raise ModelError(f"{kind} {name!r}: parameter {pname}={e!r} changes its per-row "
                                 f"shape with the number of rows ({sorted(own)}), so it mixes "
                                 "the data axis; use negative axes (kq.sum(x, -1))")
            drop = dict(dist.param_event_dims).get(pname, 0)
            if drop and len(shp) < drop:
                raise ModelError(f"{kind} {name!r}: {dist.family} parameter {pname}={e!r} has "
                                 f"per-row shape {shp}, but its last axis must hold the "
                                 "categories; give it shape (..., K), e.g. a Global of shape=(K,)")
            shapes.append(shp[: len(shp) - drop] if drop else shp)
        try:
            return per_row, tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            raise ModelError(f"{kind} {name!r}: parameter shapes {shapes} do not broadcast; "
                             "fix the shapes of the variables its parameters read") from None

    def _check_indexing(self, kind: str, name: str, pname: str, e: Expr) -> None:
        """``w[g]`` takes rows of ``w`` by the integer Data column ``g``: ``g`` must be such a
        column, and ``w`` must not be per-row (that would index the data axis)."""
        stack = [e]
        while stack:
            node = stack.pop()
            stack.extend(node.args)
            if node.op != "index" or len(node.args) != 2:
                continue
            base, idx = node.args
            idx_name = idx.attr("name") if idx.op == "var" else None
            spec = self.vars.get(idx_name)
            if spec is None or spec.role != "data" or spec.dtype != "int":
                raise ModelError(f"{kind} {name!r}: parameter {pname} indexes {base!r} by "
                                 f"{idx!r}, which is not an integer Data column; index with "
                                 "kq.Data(name, dtype='int') (e.g. w[group]), or use x[k] for a "
                                 "fixed position")
            per_row = [n for n in variables_in(base) if self.vars[n].per_row]
            if per_row:
                raise ModelError(f"{kind} {name!r}: parameter {pname} indexes {base!r}, which "
                                 f"reads the per-row variable(s) {per_row}, by the column "
                                 f"{idx_name!r}: that picks other rows (the data axis). Index a "
                                 "Global or a constant array (w[group])")

    def _check_shape(self, kind: str, name: str, param_shape: tuple, shape) -> tuple:
        if shape is None:
            return param_shape
        shape = _dims(kind, name, shape)
        try:
            ok = np.broadcast_shapes(param_shape, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ModelError(f"{kind} {name!r}: shape={shape} but its distribution's parameters have "
                             f"shape {param_shape}; pass shape={param_shape} or fix the parameters")
        return shape


def _dims(kind: str, name: str, shape) -> tuple:
    """``shape`` (an int or a sequence of ints) as a tuple of positive ints."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise ModelError(f"{kind} {name!r}: shape={shape!r} must be an int or a tuple of ints, "
                         "e.g. shape=(3,)") from None
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ModelError(f"{kind} {name!r}: shape={shape!r} has the size {d!r}; every size "
                             "must be a positive int, e.g. shape=(3,) (a scalar is shape=())")
    return tuple(int(d) for d in dims)


def Data(name: str, shape=(), dtype: str = "float") -> Expr:
    """A per-row input column; ``data[name]`` has shape (N, *shape).

    ``dtype="int"`` makes an integer column that can index a global (``w[group]``).
    """
    model = current_model()
    model._check_name("Data", name)
    if dtype not in ("float", "int"):
        raise ModelError(f"Data {name!r}: dtype={dtype!r} must be 'float' or 'int'")
    shape = _dims("Data", name, shape)
    return model._add(VarSpec(name, "data", shape, None, dtype))


def Global(name: str, dist: Distribution, shape=None) -> Expr:
    """A latent with one copy for the whole data set (prior p(theta), Gaussian q)."""
    model = current_model()
    model._check_name("Global", name)
    per_row, pshape = model._param_shapes("Global", name, dist)
    if per_row:
        raise ModelError(f"Global {name!r}: its prior {dist!r} reads a per-row variable, so it "
                         "would not be one copy for the whole data set; declare it with kq.Local")
    if dist.is_discrete:
        raise ModelError(f"Global {name!r}: {dist.family} is discrete; reparameterized VI needs a "
                         "continuous latent (use it in kq.Observed, or a continuous relaxation)")
    shape = model._check_shape("Global", name, pshape, shape)
    return model._add(VarSpec(name, "global", shape, dist))


def Local(name: str, dist: Distribution, shape=None, encoder=None) -> Expr:
    """A latent with one copy per row.

    Free (default): q(z_i) has its own mean and scale for each of the N rows.
    Amortized: ``encoder`` produces q(z_i)'s unconstrained mean and scale from row i's
    columns, e.g. ``encoder=kq.nn.amortize(kq.nn.MLP("enc", [64, 32, 2 * 8]), "image")``
    or a pair of expressions ``(loc, scale)``; its weights are kq.Param (or Global).
    """
    model = current_model()
    model._check_name("Local", name)
    _, pshape = model._param_shapes("Local", name, dist)
    if dist.is_discrete:
        raise ModelError(f"Local {name!r}: {dist.family} is discrete; reparameterized VI needs a "
                         "continuous latent")
    shape = model._check_shape("Local", name, pshape, shape)
    if encoder is not None:
        if hasattr(encoder, "for_latent"):
            encoder = encoder.for_latent(name, shape)
        if not (isinstance(encoder, tuple) and len(encoder) == 2
                and all(isinstance(e, Expr) for e in encoder)):
            raise ModelError(f"Local {name!r}: encoder= takes kq.nn.amortize(net, columns...) or a "
                             f"(loc, scale) pair of expressions, not {encoder!r}")
    return model._add(VarSpec(name, "local", shape, dist, encoder=encoder))


def Param(name: str, shape=(), init="glorot") -> Expr:
    """A point parameter: no prior, optimized (decoder/encoder weights).

    init: "glorot" (normal with variance 2/(fan_in + fan_out), for matrices), "zeros",
    a number, or an array of ``shape``.
    """
    model = current_model()
    model._check_name("Param", name)
    shape = _dims("Param", name, shape)
    if isinstance(init, str):
        if init not in ("glorot", "zeros"):
            raise ModelError(f"Param {name!r}: init={init!r}; use 'glorot', 'zeros', a number or an array")
    else:
        try:
            arr = np.asarray(init, dtype=float)
        except (TypeError, ValueError):
            raise ModelError(f"Param {name!r}: init={init!r} is not a number or an array of "
                             f"shape {shape}; use 'glorot', 'zeros', a number or an "
                             "array") from None
        if arr.ndim and arr.shape != shape:
            raise ModelError(f"Param {name!r}: init has shape {arr.shape} but shape={shape}")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"Param {name!r}: init holds NaN or inf")
        init = arr
    return model._add(VarSpec(name, "param", shape, None, init=init))


def column(name: str) -> Expr:
    """A reference to the batch's column ``name`` (Data or Observed) for an encoder: an
    amortized q may read the observations themselves, which a prior may not."""
    if not isinstance(name, str):
        raise TypeError(f"column name must be a string, got {name!r}")
    return Expr("var", (), (("name", name),))


def Observed(name: str, dist: Distribution) -> None:
    """The per-row likelihood of the column ``data[name]`` (returns nothing: observations
    are data, and other variables read data through kq.Data)."""
    model = current_model()
    model._check_name("Observed", name)
    _, pshape = model._param_shapes("Observed", name, dist)
    model._add(VarSpec(name, "observed", pshape, dist,
                       "float" if dist.support in ("real", "positive", "unit_interval") else "int"))


# == Specs as JSON ======================================================================
# ``model.to_json()`` writes ``model.to_dict()`` as strict JSON; ``kq.Model.from_json``
# and ``kq.Model.from_dict`` rebuild the model. Loading evaluates nothing from the file:
# operator names, distribution families and variable roles go through the explicit
# tables OPERATORS, FAMILIES and ROLES, and the variables are declared again through
# Data, Global, Local, Observed and Param above, so a loaded spec passes the same checks
# as a hand-written one. The loader lives here, next to the Model it builds, so that
# model.py imports no other klqp module that imports it back; klqp/spec_json.py is its
# public name (``klqp.spec_json.OPERATORS``, ``from_dict``, ...).

#: The version of the JSON layout this section writes and reads (the ``"klqp_spec"`` key).
SPEC_VERSION = 1


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
    "index": ((1, 2), {"at": _int_attr}),  # w[group] (2 args) or x[..., k] (1 arg, at=k)
    "slice": (1, {"start": _optional_int_attr, "stop": _optional_int_attr}),
    "sum": (1, {"axis": _int_attr}),
    "mean": (1, {"axis": _int_attr}),
    "concat": (None, {"axis": _int_attr}),
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
    _keys(_object(d, path), path, ("family", "params"), ("support",))
    family = d["family"]
    if not isinstance(family, str) or family not in FAMILIES:
        raise _fail(f"{path}.family", f"unknown distribution family {_show(family)}; use one of "
                                      f"{', '.join(FAMILIES)}")
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
def _float_dtype(entry: dict, path: str, role: str) -> None:
    """Latents and params hold floats: a dtype other than "float" is a mistake."""
    if entry.get("dtype", "float") != "float":
        raise _fail(f"{path}.dtype", f"{_show(entry['dtype'])}, but a {role} variable is "
                                     "'float'; drop the key or write 'float'")


def _declare_data(entry: dict, path: str, cache: dict) -> None:
    """``kq.Data`` from a saved ``"data"`` entry."""
    _keys(entry, path, ("name", "role"), ("shape", "dtype"))
    Data(entry["name"], _shape(entry.get("shape", []), f"{path}.shape"),
         entry.get("dtype", "float"))


def _declare_global(entry: dict, path: str, cache: dict) -> None:
    """``kq.Global`` from a saved ``"global"`` entry."""
    _keys(entry, path, ("name", "role", "dist"), ("shape", "dtype"))
    _float_dtype(entry, path, "global")
    shape = _shape(entry["shape"], f"{path}.shape") if "shape" in entry else None
    Global(entry["name"], dist_from_dict(entry["dist"], f"{path}.dist", cache), shape)


def _declare_local(entry: dict, path: str, cache: dict) -> None:
    """``kq.Local`` from a saved ``"local"`` entry; ``encoder`` holds the amortized
    q's ``loc`` and ``scale`` expressions."""
    _keys(entry, path, ("name", "role", "dist"), ("shape", "dtype", "encoder"))
    _float_dtype(entry, path, "local")
    shape = _shape(entry["shape"], f"{path}.shape") if "shape" in entry else None
    dist = dist_from_dict(entry["dist"], f"{path}.dist", cache)
    encoder = None
    if "encoder" in entry:
        enc = _object(entry["encoder"], f"{path}.encoder")
        _keys(enc, f"{path}.encoder", ("loc", "scale"))
        encoder = tuple(expr_from_dict(enc[k], f"{path}.encoder.{k}", cache)
                        for k in ("loc", "scale"))
    Local(entry["name"], dist, shape, encoder=encoder)


def _declare_observed(entry: dict, path: str, cache: dict) -> None:
    """``kq.Observed`` from a saved ``"observed"`` entry. Its shape and dtype follow from
    the distribution; saved ones must agree."""
    _keys(entry, path, ("name", "role", "dist"), ("shape", "dtype"))
    model = current_model()  # the one from_dict is rebuilding
    Observed(entry["name"], dist_from_dict(entry["dist"], f"{path}.dist", cache))
    spec = model.vars[entry["name"]]
    if "shape" in entry and _shape(entry["shape"], f"{path}.shape") != spec.shape:
        raise _fail(f"{path}.shape", f"{_show(entry['shape'])}, but Observed {spec.name!r}'s "
                                     f"distribution gives rows of shape {list(spec.shape)}; "
                                     "fix the distribution's parameters or the shape")
    if "dtype" in entry and entry["dtype"] != spec.dtype:
        raise _fail(f"{path}.dtype", f"{_show(entry['dtype'])}, but Observed {spec.name!r}'s "
                                     f"{spec.dist.family} gives {spec.dtype!r}; "
                                     f"write {spec.dtype!r}")


def _declare_param(entry: dict, path: str, cache: dict) -> None:
    """``kq.Param`` from a saved ``"param"`` entry; ``init`` is "glorot", "zeros", a
    number or a (nested) list."""
    _keys(entry, path, ("name", "role"), ("shape", "dtype", "init"))
    _float_dtype(entry, path, "param")
    init = entry.get("init", "glorot")
    if not isinstance(init, str):
        init = _array(init, f"{path}.init")
    Param(entry["name"], _shape(entry.get("shape", []), f"{path}.shape"), init)


#: Every variable role a spec may hold: role -> how to declare it again.
ROLES: dict[str, Callable[[dict, str, dict], None]] = {
    "data": _declare_data, "global": _declare_global, "local": _declare_local,
    "observed": _declare_observed, "param": _declare_param,
}


def _declare(entry, path: str, cache: dict) -> None:
    """Declare one saved variable in the current model; a declaration error (a bad
    shape, an unknown name) is the hand-written one, prefixed with where it is."""
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
        ROLES[role](entry, path, cache)
    except ModelError as err:
        if "spec_path" in vars(err):  # raised by this module: it already says where
            raise
        raise _fail(path, str(err)) from None
    except (TypeError, ValueError, IndexError) as err:  # e.g. an index by a float
        raise _fail(path, f"{role} {entry['name']!r}: {err}") from None


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


def from_dict(d) -> Model:
    """Rebuild a model from ``Model.to_dict()``'s plain data (``kq.Model.from_dict``).

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     mu = kq.Global("mu", kq.Normal(0.0, 10.0))
    ...     kq.Observed("y", kq.Normal(mu, 1.0))
    >>> from_dict(m.to_dict())
    Model('m', total_size=None)
      global   mu ~ Normal(mu=0.0, sigma=10.0)  shape=()
      observed y ~ Normal(mu=mu, sigma=1.0)  shape=(rows,)
    """
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
        model = Model(name, total)
    except ModelError as err:  # total_size < 1
        raise _fail("total_size", str(err)) from None
    cache: dict = {}
    with model:
        for i, entry in enumerate(variables):
            _declare(entry, f"variables[{i}]", cache)
    return model


def _refuse_constant(token: str):
    """``json.loads``'s hook for NaN and Infinity, which strict JSON has no spelling for."""
    raise ValueError(f"{token} is not a JSON number")


def loads(text) -> Model:
    """Rebuild a model from JSON text written by ``model.to_json()`` (``kq.Model.from_json``).

    >>> import klqp as kq
    >>> loads('{"klqp_spec": 1, "variables": [{"name": "x", "role": "data"}]}').data_vars[0].name
    'x'
    >>> loads("name = 'm'")
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: spec (text): not JSON (Expecting value: line 1 column 1 (char 0)); ...
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise _fail("(text)", f"expected JSON text (a str), got {type(text).__name__}")
    try:
        d = json.loads(text, parse_constant=_refuse_constant)  # bytes: UTF-8
    except (ValueError, RecursionError) as err:
        raise _fail("(text)", f"not JSON ({err}); a spec file is the text model.to_json() "
                              "writes") from None
    return from_dict(d)


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


def dumps(model: Model, indent=None) -> str:
    """``model.to_dict()`` as strict JSON text (``model.to_json``).

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
