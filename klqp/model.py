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

import keyword
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import spec_json
from .distributions import Distribution, interval_bounds
from .errors import ModelError
from .expr import Expr, NumpyOps, evaluate, variables_in

__all__ = ["Model", "Data", "Global", "Local", "Observed", "Param", "Deterministic", "Potential",
           "column",
           "VarSpec",
           "ModelError", "ROW_INDEX", "current_model"]

#: Key of a streamed batch's row numbers (0..N-1), needed when a model has Local latents.
ROW_INDEX = "row_index"

# Shape checks evaluate parameters on this many fake rows, and on one more: primes no
# model's own sizes are likely to equal, so a size-3 vector is never taken for the rows.
_DUMMY_ROWS = 1009
PROBE_ROWS = (_DUMMY_ROWS, 1013)
_DUMMY_VALUE = {"real": 0.5, "positive": 1.0, "unit_interval": 0.5}


@dataclass(frozen=True)
class VarSpec:
    """One declared variable.

    role: "data" (a per-row input column), "global" (one copy, prior + q),
    "local" (one copy per row, prior + q), "observed" (per-row likelihood),
    "param" (a point parameter: no prior, optimized), "deterministic" (a named
    expression of the others, kept in results; the objective never sees it),
    "potential" (an extra log-density term, its own term of the objective).
    shape: the variable's own shape; for per-row roles the shape of ONE row.
    encoder: for an amortized local, (loc, scale) expressions of the row's columns.
    init: for a param, how to initialise it ("glorot", "zeros", a number or an array).
    expr: for a deterministic or a potential, its expression; row_wise: it reads a
    per-row variable (a potential's value then has one term per row).
    """

    name: str
    role: str
    shape: tuple
    dist: Optional[Distribution] = None
    dtype: str = "float"
    encoder: Optional[tuple] = None
    init: Any = None
    expr: Optional[Expr] = None
    row_wise: bool = False
    transform: Optional[str] = None  # "ordered": a latent vector kept increasing

    @property
    def amortized(self) -> bool:
        return self.encoder is not None

    @property
    def per_row(self) -> bool:
        return self.role in ("data", "local", "observed") or self.row_wise

    @property
    def support(self) -> str:
        if self.transform is not None:
            return self.transform
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
        if self.expr is not None:
            d["expr"] = self.expr.to_dict()
        if self.transform is not None:
            d["transform"] = self.transform
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
        self.vars: dict[str, VarSpec] = {}  # what the objective reads
        # kq.Deterministic: named expressions of the variables, kept for results only
        # (apart, so a backend lowering ``vars`` never meets one)
        self.deterministic_vars: dict[str, VarSpec] = {}
        # kq.Potential: extra log-density terms (apart too: a backend adds them to the
        # objective's own term, after every variable they read has its value)
        self.potential_vars: dict[str, VarSpec] = {}

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
    def deterministics(self) -> list[VarSpec]:
        return list(self.deterministic_vars.values())

    @property
    def potentials(self) -> list[VarSpec]:
        return list(self.potential_vars.values())

    @property
    def free_locals(self) -> list[VarSpec]:
        """Locals with their own q parameters per row (not amortized)."""
        return [v for v in self.locals if not v.amortized]

    @property
    def row_column(self) -> Optional[str]:
        """A per-row column every batch holds, to count its rows by: the first Observed,
        else the first Data column."""
        first = (self.observed or self.data_vars or [None])[0]
        return None if first is None else first.name

    @property
    def latents(self) -> list[VarSpec]:
        return [v for v in self.vars.values() if v.role in ("global", "local")]

    def __getitem__(self, name: str) -> VarSpec:
        try:
            for table in (self.vars, self.deterministic_vars, self.potential_vars):
                if name in table:
                    return table[name]
            raise KeyError(name)
        except KeyError:
            raise KeyError(f"model {self.name!r} has no variable {name!r}; it has "
                           f"{list(self.vars) + list(self.deterministic_vars) + list(self.potential_vars)}"
                           ) from None

    def __repr__(self) -> str:
        lines = [f"Model({self.name!r}, total_size={self.total_size})"]
        for v in list(self.vars.values()) + self.potentials + self.deterministics:
            rhs = (f" ~ {v.dist!r}" if v.dist is not None else
                   f" = {v.expr!r}" if v.expr is not None else "")
            shape = str(((("rows",) if v.per_row else ()) + tuple(v.shape))).replace("'", "")
            extra = f"  transform={v.transform}" if v.transform else ""
            lines.append(f"  {v.role:<8} {v.name}{rhs}  shape={shape}{extra}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"klqp_spec": spec_json.SPEC_VERSION, "name": self.name, "total_size": self.total_size,
                "variables": [v.to_dict() for v in
                              list(self.vars.values()) + self.potentials + self.deterministics]}

    def objective_dict(self) -> dict:
        """``to_dict()`` without the Deterministics: what the objective reads. Two models
        equal here compile to the same program and resume each other's checkpoints."""
        d = self.to_dict()
        d["variables"] = [e for e in d["variables"] if e["role"] != "deterministic"]
        return d

    # -- saving and loading (the codec: klqp/spec_json.py) ---------------------------------
    def to_json(self, indent: Optional[int] = None) -> str:
        """This spec as strict JSON text, ``to_dict()`` with its ``"klqp_spec"`` version;
        ``kq.Model.from_json`` reads it back."""
        return spec_json.dumps(self, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Model":
        """The model saved as ``text`` by ``to_json``; evaluates nothing from the text and
        declares every variable again, with the usual checks (a bad spec: ModelError)."""
        return loads(text)

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
        """The model ``to_dict`` described (see ``from_json``)."""
        return from_dict(d)  # the module-level function below, not this method

    # -- declaration ---------------------------------------------------------------
    def _add(self, spec: VarSpec) -> Expr:
        if spec.role == "deterministic":
            self.deterministic_vars[spec.name] = spec
        elif spec.role == "potential":
            self.potential_vars[spec.name] = spec
        else:
            self.vars[spec.name] = spec
        return Expr("var", (), (("name", spec.name),))

    def _check_name(self, kind: str, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ModelError(f"{kind} name {name!r} must be a Python identifier, e.g. 'theta'")
        if name == ROW_INDEX:
            raise ModelError(f"{kind} name {name!r} is reserved for the row numbers of a streamed batch")
        if name in self.vars or name in self.deterministic_vars or name in self.potential_vars:
            raise ModelError(f"{kind} {name!r}: model {self.name!r} already has a "
                             f"{self[name].role} variable with that name; pick another name")

    def dummy_value(self, spec: VarSpec, rows: int = _DUMMY_ROWS) -> np.ndarray:
        """A placeholder of the right shape (per-row variables get ``rows`` rows)."""
        shape = ((rows,) if spec.per_row else ()) + tuple(spec.shape)
        if spec.dtype == "int":
            return np.zeros(shape, dtype=int)
        bounds = interval_bounds(spec.support)
        if bounds:
            return np.full(shape, 0.5 * (bounds[0] + bounds[1]))
        if spec.support == "ordered":  # increasing along the last axis
            return np.broadcast_to(np.arange(shape[-1], dtype=float), shape).copy()
        if spec.support == "simplex":  # the simplex's centre
            return np.full(shape, 1.0 / shape[-1])
        if spec.support == "corr_cholesky":  # the identity correlation's factor
            return np.broadcast_to(np.eye(shape[-1]), shape).copy()
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
            self._check_positive(kind, name, dist, pname, e)
        # Per-row parameters are evaluated on two numbers of fake rows: a parameter whose
        # leading axis does not follow them sums, indexes or joins across the data axis.
        envs = {rows: {n: self.dummy_value(self.vars[n], rows) for n in reads}
                for rows in (PROBE_ROWS if per_row else (_DUMMY_ROWS,))}
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
                                         "variables it reads (a per-row scalar against a "
                                         "vector needs a new last axis: x[..., None] - v; "
                                         "an array with one entry per data point is data: "
                                         "declare it kq.Data('name') and pass it in data=)"
                                         ) from None
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
            if dist.components and pname == "w" and shp[-1:] != (len(dist.components),):
                raise ModelError(f"{kind} {name!r}: kq.Mixture's w={e!r} has per-row shape "
                                 f"{shp}, but its last axis must hold the "
                                 f"{len(dist.components)} components' weights")
            drop = dict(dist.param_event_dims).get(pname, 0)
            if drop and len(shp) < drop:
                raise ModelError(f"{kind} {name!r}: {dist.family} parameter {pname}={e!r} has "
                                 f"per-row shape {shp}, but its last axis must hold the "
                                 "categories; give it shape (..., K), e.g. a Global of shape=(K,)")
            shapes.append(shp[: len(shp) - drop] if drop else shp)
        try:
            return per_row, tuple(np.broadcast_shapes(*shapes)) + dist.value_shape
        except ValueError:
            raise ModelError(f"{kind} {name!r}: parameter shapes {shapes} do not broadcast; "
                             "fix the shapes of the variables its parameters read") from None

    def _check_positive(self, kind: str, name: str, dist: Distribution, pname: str,
                        e: Expr) -> None:
        """A parameter that must be > 0 (a scale, a rate) given as a latent on the whole
        real line (``sigma = kq.Global("sigma", kq.StudentT(1, 0, 2.5))``) would be negative
        for half of q's draws: refuse it with the fix."""
        from .distributions import PARAM_DOMAINS

        family = dist.component if dist.components else dist.family
        rule = PARAM_DOMAINS.get(family, {}).get(pname.rsplit("_", 1)[0] if dist.components
                                                 else pname)
        base = e.args[0] if e.op == "index" else e
        spec = self.vars.get(base.attr("name")) if base.op == "var" else None
        if rule and rule[0] == "> 0" and spec is not None and spec.role in ("global", "local") \
                and spec.support == "real":
            raise ModelError(
                f"{kind} {name!r}: {pname}={e!r} must be > 0, but {spec.name!r} is a "
                f"{spec.dist.family} latent on the whole real line, so q would draw negative "
                f"values; give {spec.name!r} a positive prior (kq.HalfCauchy, kq.HalfStudentT, "
                f"kq.HalfNormal, kq.Exponential, ...) or write {pname}=kq.exp({spec.name})")

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


def _no_mixture(kind: str, name: str, dist) -> None:
    if isinstance(dist, Distribution) and dist.components:
        raise ModelError(f"{kind} {name!r}: kq.Mixture is a likelihood, for kq.Observed; a "
                         "latent's prior is one family (a mixture prior has no "
                         "reparameterized Gaussian q)")


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


def _check_transform(kind: str, name: str, dist: Distribution, shape: tuple, transform):
    """``transform="ordered"``: a vector on the real line kept increasing (PyMC's
    ``transforms.ordered``, NumPyro's ``ordered_vector``), e.g. learned cutpoints."""
    if transform is None:
        return None
    if transform != "ordered":
        raise ModelError(f"{kind} {name!r}: transform={transform!r}; the one transform a latent "
                         "may ask for is 'ordered' (others follow from the prior's support)")
    if dist.support != "real":
        raise ModelError(f"{kind} {name!r}: transform='ordered' needs a prior on the whole real "
                         f"line (kq.Normal, kq.StudentT, ...), not {dist.family} on "
                         f"{dist.support}")
    if len(shape) < 1 or shape[-1] < 2:
        raise ModelError(f"{kind} {name!r}: transform='ordered' orders the last axis, so give "
                         f"shape=(K,) with K >= 2, not {shape}")
    return "ordered"


def Global(name: str, dist: Distribution, shape=None, transform=None) -> Expr:
    """A latent with one copy for the whole data set (prior p(theta), Gaussian q).

    ``transform="ordered"`` keeps a vector increasing along its last axis (its prior's
    density is taken at the ordered values, as PyMC's ``transform=ordered``): the
    cutpoints of an ordinal model, ``kq.Global("c", kq.Normal(0, 5), shape=(3,),
    transform="ordered")``."""
    model = current_model()
    model._check_name("Global", name)
    _no_mixture("Global", name, dist)
    per_row, pshape = model._param_shapes("Global", name, dist)
    if per_row:
        raise ModelError(f"Global {name!r}: its prior {dist!r} reads a per-row variable, so it "
                         "would not be one copy for the whole data set; declare it with kq.Local")
    if dist.is_discrete:
        raise ModelError(f"Global {name!r}: {dist.family} is discrete; reparameterized VI needs a "
                         "continuous latent (use it in kq.Observed, or a continuous relaxation)")
    shape = model._check_shape("Global", name, pshape, shape)
    transform = _check_transform("Global", name, dist, shape, transform)
    return model._add(VarSpec(name, "global", shape, dist, transform=transform))


def Local(name: str, dist: Distribution, shape=None, encoder=None, transform=None) -> Expr:
    """A latent with one copy per row.

    Free (default): q(z_i) has its own mean and scale for each of the N rows.
    Amortized: ``encoder`` produces q(z_i)'s unconstrained mean and scale from row i's
    columns, e.g. ``encoder=kq.nn.amortize(kq.nn.MLP("enc", [64, 32, 2 * 8]), "image")``
    or a pair of expressions ``(loc, scale)``; its weights are kq.Param (or Global).
    ``transform="ordered"``: as kq.Global's, each row's vector increasing.
    """
    model = current_model()
    model._check_name("Local", name)
    _no_mixture("Local", name, dist)
    if isinstance(dist, Distribution) and dist.family == "LKJCholesky":
        raise ModelError(f"Local {name!r}: kq.LKJCholesky is for a Global (one correlation "
                         "matrix shared by the rows or groups)")
    if isinstance(dist, Distribution) and dist.family == "Dirichlet":
        raise ModelError(f"Local {name!r}: kq.Dirichlet is for a Global (or an Observed); a "
                         "per-row simplex can be written as kq.exp(a - kq.logsumexp(a, -1)"
                         "[..., None]) of a Normal Local vector a")
    _, pshape = model._param_shapes("Local", name, dist)
    if dist.is_discrete:
        raise ModelError(f"Local {name!r}: {dist.family} is discrete; reparameterized VI needs a "
                         "continuous latent")
    shape = model._check_shape("Local", name, pshape, shape)
    transform = _check_transform("Local", name, dist, shape, transform)
    if encoder is not None:
        if hasattr(encoder, "for_latent"):
            encoder = encoder.for_latent(name, shape)
        if not (isinstance(encoder, tuple) and len(encoder) == 2
                and all(isinstance(e, Expr) for e in encoder)):
            raise ModelError(f"Local {name!r}: encoder= takes kq.nn.amortize(net, columns...) or a "
                             f"(loc, scale) pair of expressions, not {encoder!r}")
    return model._add(VarSpec(name, "local", shape, dist, encoder=encoder, transform=transform))


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


def Deterministic(name: str, expr) -> Expr:
    """A named quantity computed from the model's variables (PyMC's ``pm.Deterministic``):
    ``mu = kq.Deterministic("mu", a[county] + b * floor)``. It returns ``expr`` itself,
    so using ``mu`` later is using the expression; the objective never changes. Results
    keep it: ``result.sample("mu")``, ``result.mean("mu")``, ``result.predict(...)`` and
    ``to_inference_data`` give its draws under q (one per row when it reads a per-row
    variable).

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     x = kq.Data("x")
    ...     w = kq.Global("w", kq.Normal(0.0, 1.0))
    ...     mu = kq.Deterministic("mu", w * x)
    ...     kq.Observed("y", kq.Normal(mu, 1.0))
    >>> m["mu"].role, m["mu"].per_row
    ('deterministic', True)
    """
    from .distributions import Distribution
    from .expr import as_expr

    model = current_model()
    model._check_name("Deterministic", name)
    expr = as_expr(expr)
    # the checks of a distribution's parameter: declared names, the data axis, indexing
    row_wise, shape = model._param_shapes("Deterministic", name,
                                          Distribution("Deterministic", (("value", expr),), "real"))
    model._add(VarSpec(name, "deterministic", shape, None, expr=expr, row_wise=row_wise))
    return expr


def Potential(name: str, expr) -> None:
    """An extra term of the model's log density (PyMC's ``pm.Potential``, NumPyro's
    ``numpyro.factor``): a custom likelihood, a soft constraint, a penalty. It is the
    objective's own term ``potential``, beside ``loglik`` (so ``loglik``, held-out scores
    and LOO stay the observations' alone), added to the ELBO at weight 1 whatever beta
    and the likelihood weight are (multiply the expression to weight it).

    Per-row (it reads a Data column or a Local): each row's value (summed over the row's
    own axes) is a term of the sum over the data set, estimated from a batch with the
    same N/b as ``loglik``. Global (it reads only Globals, Params and constants): its sum
    is added once, like a prior.

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     x = kq.Data("x")
    ...     y = kq.Data("y")
    ...     w = kq.Global("w", kq.Normal(0.0, 1.0))
    ...     kq.Potential("laplace_lik", -kq.abs(y - w * x))  # a custom per-row log density
    >>> m["laplace_lik"].per_row
    True
    """
    from .distributions import Distribution
    from .expr import as_expr

    model = current_model()
    model._check_name("Potential", name)
    try:
        expr = as_expr(expr)
    except TypeError as err:
        raise ModelError(f"Potential {name!r}: {err}; give an expression of the model's "
                         "variables, e.g. -kq.abs(y - mu)") from None
    if not variables_in(expr):
        raise ModelError(f"Potential {name!r}: {expr!r} reads no variable, so it is a constant "
                         "that changes neither the fit nor q; drop it")
    row_wise, shape = model._param_shapes("Potential", name,
                                          Distribution("Potential", (("value", expr),), "real"))
    model._add(VarSpec(name, "potential", shape, None, expr=expr, row_wise=row_wise))


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
    if isinstance(dist, Distribution) and dist.family == "LKJCholesky":
        raise ModelError(f"Observed {name!r}: kq.LKJCholesky is a prior for a Global; observed "
                         "correlations are not a likelihood klqp has")
    _, pshape = model._param_shapes("Observed", name, dist)
    model._add(VarSpec(name, "observed", pshape, dist,
                       "int" if dist.is_discrete else "float"))


# -- saving and loading: the codec is klqp/spec_json.py --------------------------------
#: Each role's declaration function, handed to ``spec_json.model_from_dict`` (which
#: imports no klqp.model, so the loader gets the model's functions from here).
DECLARE = {"data": Data, "global": Global, "local": Local, "observed": Observed,
           "param": Param, "deterministic": Deterministic, "potential": Potential}


def from_dict(d) -> Model:
    """Rebuild a model from ``Model.to_dict()``'s plain data (``kq.Model.from_dict``)."""
    return spec_json.model_from_dict(d, Model, DECLARE)


def loads(text) -> Model:
    """Rebuild a model from JSON text written by ``model.to_json()`` (``kq.Model.from_json``).

    >>> loads('{"klqp_spec": 1, "variables": [{"name": "x", "role": "data"}]}').data_vars[0].name
    'x'
    """
    return from_dict(spec_json.parse(text))


dumps = spec_json.dumps  # model.to_json(), beside loads
