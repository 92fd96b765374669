"""Expressions: a tiny, plain-data tree that every backend lowers.

A model's distribution parameters are expressions over its variables
(``theta * x``, ``kq.exp(log_sigma)``, ``w[group]``). Building one runs no numeric
code: each node is an operator name, its arguments and a few attributes, so a spec
can be printed, compared and saved as JSON. A backend evaluates a tree with
:func:`evaluate`, handing in its own array namespace (``jax.numpy``,
``pytensor.tensor`` or ``numpy``).

>>> import klqp as kq
>>> with kq.Model("m") as m:
...     x = kq.Data("x")
...     w = kq.Global("w", kq.Normal(0.0, 1.0))
>>> print(kq.exp(w * x + 1.0))
exp(((w * x) + 1.0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "Expr", "Const", "as_expr", "exp", "log", "log1p", "sqrt", "abs", "lgamma", "sigmoid",
    "softplus", "tanh", "relu", "sum", "mean", "logsumexp", "cumsum", "concat", "stack",
    "expand_dims", "reshape", "maximum", "minimum", "where", "log_softmax", "softmax", "logit",
    "square", "clip", "evaluate", "variables_in",
    "NumpyOps",
]

_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@"}
_UNARY = ("neg", "exp", "log", "sigmoid", "softplus", "tanh", "relu", "log_sigmoid", "log1p",
          "sqrt", "abs", "lgamma")
_ELEMENTWISE2 = ("maximum", "minimum")        # f(a, b), broadcast
_COMPARE = {"greater": ">", "greater_equal": ">=", "less": "<", "less_equal": "<="}  # a OP b
_AXIS = ("sum", "mean", "logsumexp", "cumsum", "expand_dims")  # f(x, axis)
_JOIN = ("concat", "stack")                    # f([x, y, ...], axis)


@dataclass(frozen=True, eq=False)
class Expr:
    """A node: ``op`` applied to ``args`` with static ``attrs`` (e.g. an axis)."""

    op: str
    args: tuple = ()
    attrs: tuple = ()  # sorted (key, value) pairs, so the node stays hashable plain data

    # -- arithmetic builds new nodes ------------------------------------------------
    def __add__(self, o): return Expr("add", (self, as_expr(o)))
    def __radd__(self, o): return Expr("add", (as_expr(o), self))
    def __sub__(self, o): return Expr("sub", (self, as_expr(o)))
    def __rsub__(self, o): return Expr("sub", (as_expr(o), self))
    def __mul__(self, o): return Expr("mul", (self, as_expr(o)))
    def __rmul__(self, o): return Expr("mul", (as_expr(o), self))
    def __truediv__(self, o): return Expr("div", (self, as_expr(o)))
    def __rtruediv__(self, o): return Expr("div", (as_expr(o), self))
    def __pow__(self, o): return Expr("pow", (self, as_expr(o)))
    def __matmul__(self, o): return Expr("matmul", (self, as_expr(o)))
    def __rmatmul__(self, o): return Expr("matmul", (as_expr(o), self))
    def __neg__(self): return Expr("neg", (self,))
    # comparisons give a mask for kq.where (no ==: an expression is compared by identity)
    def __gt__(self, o): return Expr("greater", (self, as_expr(o)))
    def __ge__(self, o): return Expr("greater_equal", (self, as_expr(o)))
    def __lt__(self, o): return Expr("less", (self, as_expr(o)))
    def __le__(self, o): return Expr("less_equal", (self, as_expr(o)))

    def __getitem__(self, index):
        """Index by an integer data column (``w[group]``), by a Python int (``w[0]``) or
        slice (``h[2:4]``); a lone int or slice acts on the LAST axis. A NumPy-style tuple
        names every axis (``x[:, 0]``, ``m[1, :]``: the expression must have exactly that
        many axes, a per-row one counting its rows) or ends after ``...``
        (``x[..., 0, :]``), with ints, step-less slices and ``:``.

        >>> import klqp as kq
        >>> with kq.Model("m"):
        ...     x = kq.Data("x", shape=(3,))
        >>> x[:, 0], x[..., 1:]
        (x[..., 0], x[..., 1:])
        """
        if isinstance(index, tuple):
            return _tuple_index(self, index)
        if index is None:  # x[None] as x[..., None]: a new last axis
            return expand_dims(self, -1)
        if isinstance(index, (int, np.integer, slice)):
            return _axis_index(self, index, -1, None)
        if not isinstance(index, Expr):
            raise TypeError(f"index a klqp expression with an int or an integer Data column, not {index!r}")
        return Expr("index", (self, index))

    # NumPy's functions on an expression build the expression (np.exp(w * x) is
    # kq.exp(w * x)); those klqp has no operator for are refused by name
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        build = _UFUNCS.get(ufunc.__name__) if method == "__call__" and not kwargs else None
        if build is None:
            raise TypeError(f"NumPy's {ufunc.__name__} cannot act on a klqp expression: klqp "
                            "expressions are symbolic. Use klqp's functions (kq.exp, kq.log, "
                            "kq.log1p, kq.sqrt, kq.abs, kq.lgamma, kq.tanh, kq.sigmoid, "
                            "kq.maximum, kq.minimum, kq.sum, kq.logsumexp, ...) and arithmetic")
        return build(*(as_expr(a) for a in inputs))

    def sum(self, axis: int = -1) -> "Expr":
        return sum(self, axis)

    def mean(self, axis: int = -1) -> "Expr":
        return mean(self, axis)

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)

    def __bool__(self):
        raise TypeError("a klqp expression has no truth value (it is symbolic)")

    def __repr__(self) -> str:
        if self.op == "const":
            v = self.attr("value")
            return repr(v) if np.ndim(v) == 0 else f"array{np.shape(v)}"
        if self.op == "var":
            return self.attr("name")
        if self.op in _BINARY:
            return f"({self.args[0]!r} {_BINARY[self.op]} {self.args[1]!r})"
        if self.op == "neg":
            return f"-{self.args[0]!r}"
        if self.op == "index" and len(self.args) == 2:
            return f"{self.args[0]!r}[{self.args[1]!r}]"
        if self.op in ("index", "slice"):
            at = (repr(self.attr("at")) if self.op == "index" else
                  ":".join("" if v is None else str(v) for v in (self.attr("start"), self.attr("stop"))))
            rank, axis = self.attr("rank"), self.attr("axis", -1)
            if rank is None and axis == -1 and self.op == "index":  # x[k]: the last axis
                return f"{self.args[0]!r}[{at}]"
            if rank is None:  # x[..., a:b] or x[..., k, :]
                return f"{self.args[0]!r}[{', '.join(['...', at] + [':'] * (-axis - 1))}]"
            return f"{self.args[0]!r}[{', '.join([':'] * (rank + axis) + [at] + [':'] * (-axis - 1))}]"
        if self.op in _COMPARE:
            return f"({self.args[0]!r} {_COMPARE[self.op]} {self.args[1]!r})"
        if self.op in _AXIS:
            return f"{self.op}({self.args[0]!r}, axis={self.attr('axis')})"
        if self.op == "reshape":
            return f"reshape({self.args[0]!r}, {self.attr('shape')!r})"
        return f"{self.op}({', '.join(repr(a) for a in self.args)})"

    # -- plain data -------------------------------------------------------------------
    def to_dict(self) -> dict:
        attrs = {k: (np.asarray(v).tolist() if k == "value" or isinstance(v, np.generic) else v)
                 for k, v in self.attrs}  # NumPy scalars (a slice's np.int64 stop) as JSON's
        return {"op": self.op, "args": [a.to_dict() for a in self.args], "attrs": attrs}


def Const(value) -> Expr:
    """A constant (a number or an array), stored as plain data."""
    value = np.asarray(value, dtype=float) if not isinstance(value, (int, float)) else value
    return Expr("const", (), (("value", value),))


def as_expr(value) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a boolean ({value!r}) is not a valid model expression")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return Const(float(value))
    arr = np.asarray(value)
    if arr.ndim == 0 and arr.dtype.kind in "iuf":
        return Const(float(arr))
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"cannot use {type(value).__name__} {value!r} in a model expression")
    return Const(arr.astype(float))


def _axis_index(x: Expr, index, axis: int, rank) -> Expr:
    """x indexed by an int or a step-less slice on ``axis`` (negative); ``rank``: the
    number of axes a NumPy-style tuple said x has (checked when evaluated), or None."""
    extra = (() if axis == -1 else (("axis", axis),)) + (() if rank is None else (("rank", rank),))
    if isinstance(index, (int, np.integer)):
        return Expr("index", (x,), (("at", int(index)),) + extra)
    if index.step not in (None, 1):
        raise TypeError("slices of klqp expressions take no step")
    return Expr("slice", (x,), (("start", index.start), ("stop", index.stop)) + extra)


def _tuple_index(x: Expr, index: tuple) -> Expr:
    """``x[:, 0]``, ``m[1, :]``, ``x[..., 0, :]``, ``w[group, :]``, ``x[..., None]``."""
    full = lambda e: isinstance(e, slice) and e == slice(None)
    if index == (Ellipsis, None):
        return expand_dims(x, -1)
    rank = None
    if index and index[0] is Ellipsis:
        index, rank = index[1:], False
    if any(e is Ellipsis or e is None for e in index):
        raise TypeError(f"klqp expressions take ... only first, and a new axis only as "
                        f"x[..., None]; got {index!r}")
    length = len(index)
    rank = None if rank is False else length
    for pos in reversed(range(length)):  # right to left: an int drops an axis to its right
        entry = index[pos]
        if full(entry):
            continue
        if isinstance(entry, Expr):
            if pos != 0 or rank is None:
                raise TypeError("an integer column indexes the first axis only: w[group] or "
                                "w[group, :]")
            x = x[entry]
        elif isinstance(entry, (int, np.integer, slice)):
            x = _axis_index(x, entry, pos - length, rank)
            if not isinstance(entry, slice):
                length, rank = length - 1, None if rank is None else rank - 1
        else:
            raise TypeError(f"index a klqp expression with ints, slices and ':', not {entry!r}")
    return x


def _unary(op: str) -> Callable[[Any], Expr]:
    def f(x) -> Expr:
        return Expr(op, (as_expr(x),))
    f.__name__ = op
    f.__doc__ = f"Elementwise ``{op}`` of an expression."
    return f


exp = _unary("exp")
log = _unary("log")
sigmoid = _unary("sigmoid")
softplus = _unary("softplus")
tanh = _unary("tanh")
relu = _unary("relu")
log1p = _unary("log1p")
sqrt = _unary("sqrt")
abs = _unary("abs")  # noqa: A001 - mirrors numpy's name on purpose
lgamma = _unary("lgamma")
lgamma.__doc__ = "Elementwise log |Gamma(x)| (``scipy.special.gammaln``): log(n!) = lgamma(n + 1)."


_UFUNCS: dict[str, Callable[..., Expr]] = {
    "add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
    "true_divide": lambda a, b: a / b, "divide": lambda a, b: a / b,
    "power": lambda a, b: a ** b, "matmul": lambda a, b: a @ b, "negative": lambda a: -a,
    "exp": exp, "log": log, "log1p": log1p, "sqrt": sqrt, "absolute": abs, "tanh": tanh,
    "maximum": lambda a, b: maximum(a, b), "minimum": lambda a, b: minimum(a, b),
    "greater": lambda a, b: a > b, "greater_equal": lambda a, b: a >= b,
    "less": lambda a, b: a < b, "less_equal": lambda a, b: a <= b,
}


def maximum(a, b) -> Expr:
    """Elementwise maximum of two expressions (broadcast as NumPy's)."""
    return Expr("maximum", (as_expr(a), as_expr(b)))


def minimum(a, b) -> Expr:
    """Elementwise minimum of two expressions (broadcast as NumPy's)."""
    return Expr("minimum", (as_expr(a), as_expr(b)))


def where(condition, x, y) -> Expr:
    """``x`` where ``condition`` holds, else ``y`` (NumPy's where, broadcast); the
    condition is a comparison such as ``z > 0``. Both branches are computed: keep the
    one not taken finite (``kq.where(x > 0, kq.log(kq.maximum(x, 1e-12)), 0.0)``), or
    its NaN reaches the gradient.

    >>> import klqp as kq
    >>> with kq.Model("m"):
    ...     x = kq.Data("x")
    >>> kq.where(x > 0, x, 0.0)
    where((x > 0.0), x, 0.0)
    """
    return Expr("where", (as_expr(condition), as_expr(x), as_expr(y)))


def reshape(x, shape) -> Expr:
    """``x`` with its trailing axes of ``prod(shape)`` entries reshaped to ``shape``
    (a row's own axes: the data axis of a per-row expression stays first), e.g. a
    (rows, 6) network output as (rows, 2, 3) with ``kq.reshape(h, (2, 3))``."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not dims or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                       for d in dims):
        raise TypeError(f"kq.reshape: shape={shape!r} must be positive ints, e.g. (2, 3)")
    return Expr("reshape", (as_expr(x),), (("shape", tuple(int(d) for d in dims)),))


def sum(x, axis: int = -1) -> Expr:  # noqa: A001 - mirrors numpy's name on purpose
    """Sum over ``axis``. Per-row expressions keep the row axis first, so use a
    negative axis (``-1``) to sum over a row's own entries."""
    return Expr("sum", (as_expr(x),), (("axis", int(axis)),))


def mean(x, axis: int = -1) -> Expr:
    """Mean over ``axis`` (see :func:`sum` for the axis convention)."""
    return Expr("mean", (as_expr(x),), (("axis", int(axis)),))


def logsumexp(x, axis: int = -1) -> Expr:
    """log(sum(exp(x))) over ``axis``, computed stably (a mixture's log density:
    ``kq.logsumexp(kq.log(w) + component_logps, -1)``)."""
    return Expr("logsumexp", (as_expr(x),), (("axis", int(axis)),))


def cumsum(x, axis: int = -1) -> Expr:
    """Cumulative sum along ``axis`` (ordered cutpoints: ``c0 + kq.cumsum(gaps)``)."""
    return Expr("cumsum", (as_expr(x),), (("axis", int(axis)),))


def expand_dims(x, axis: int = -1) -> Expr:
    """``x`` with a new axis of length 1 at ``axis`` (``x[..., None]`` is axis=-1), so a
    per-row scalar broadcasts against a row's vector."""
    return Expr("expand_dims", (as_expr(x),), (("axis", int(axis)),))


def log_softmax(x, axis: int = -1) -> Expr:
    """log(softmax(x)) over ``axis``, computed stably as ``x - logsumexp(x, axis)``.

    >>> import klqp as kq
    >>> with kq.Model("m"):
    ...     w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(3,))
    >>> kq.log_softmax(w)
    (w - expand_dims(logsumexp(w, axis=-1), axis=-1))
    """
    x = as_expr(x)
    return x - expand_dims(logsumexp(x, axis), axis)


def softmax(x, axis: int = -1) -> Expr:
    """exp(x) normalized to sum to 1 over ``axis`` (mixture weights, class probabilities);
    ``exp(log_softmax(x, axis))``, so large entries do not overflow."""
    return exp(log_softmax(x, axis))


def logit(p) -> Expr:
    """Elementwise log(p / (1 - p)), the inverse of :func:`sigmoid`, for p in (0, 1)."""
    p = as_expr(p)
    return log(p) - log1p(-p)


def square(x) -> Expr:
    """Elementwise x * x."""
    x = as_expr(x)
    return x * x


def clip(x, lower, upper) -> Expr:
    """``x`` limited to [lower, upper] elementwise (``minimum(maximum(x, lower), upper)``;
    its gradient is 0 where the limit applies)."""
    return minimum(maximum(x, lower), upper)


def concat(parts, axis: int = -1) -> Expr:
    """Join expressions along ``axis`` (default: a row's last axis). With a negative axis
    the other axes broadcast, as in arithmetic: ``kq.concat([[0.0], x @ W], -1)`` puts a
    0 before every row's (K - 1) logits (a reference category)."""
    return Expr("concat", tuple(as_expr(p) for p in parts), (("axis", int(axis)),))


def stack(parts, axis: int = -1) -> Expr:
    """Stack expressions of one shape along a new ``axis`` (default: a new last axis)."""
    return Expr("stack", tuple(as_expr(p) for p in parts), (("axis", int(axis)),))


def _static_shape(x) -> tuple:
    """A NumPy, JAX or PyTensor array's shape as far as it is known (None: unknown)."""
    shape = getattr(getattr(x, "type", None), "shape", None)  # PyTensor's static shape
    return tuple(shape) if isinstance(shape, tuple) else tuple(np.shape(x))


def _broadcast_needed(parts, axis: int) -> bool:
    """Whether ``concat``'s parts differ in rank or in a known size off ``axis`` (< 0)."""
    shapes = [_static_shape(p) for p in parts]
    if len({len(s) for s in shapes}) > 1:
        return True
    off = [s[:len(s) + axis] + s[len(s) + axis + 1:] for s in shapes]
    return any(len({d for d in dims if d is not None}) > 1 for dims in zip(*off))


def variables_in(expr: Expr) -> list[str]:
    """Names of the variables an expression reads, in first-seen order."""
    seen: dict[str, None] = {}
    stack = [expr]
    while stack:
        node = stack.pop()
        if node.op == "var":
            seen.setdefault(node.attr("name"))
        stack.extend(reversed(node.args))
    return list(seen)


class ArrayOps:
    """The array namespace :func:`evaluate` computes in: the unary functions of
    ``_UNARY``, ``maximum``/``minimum``, ``sum``/``mean``/``logsumexp``/``cumsum``/
    ``expand_dims`` of ``(x, axis)``, ``concat``/``stack`` of ``(parts, axis)`` and
    ``const(value)``, built from an array module ``xp`` (NumPy, ``jax.numpy``,
    ``pytensor.tensor``); arithmetic, ``@`` and indexing come from its arrays'
    operators. A backend passes its own functions where its library has better ones
    (``jax.nn.softplus``, ``pt.sigmoid``, its ``gammaln`` as ``lgamma``).

    >>> ops = ArrayOps(np)
    >>> float(ops.softplus(0.0)) == float(np.log(2.0)), ops.sum(np.ones((2, 3)), 0).tolist()
    (True, [2.0, 2.0, 2.0])
    """

    def __init__(self, xp, *, sigmoid=None, softplus=None, log_sigmoid=None, relu=None,
                 const=None, lgamma=None):
        self.xp = xp
        self.exp, self.log, self.tanh = xp.exp, xp.log, xp.tanh
        self.log1p, self.sqrt, self.abs = xp.log1p, xp.sqrt, xp.abs
        self.maximum, self.minimum = xp.maximum, xp.minimum
        self.lgamma = lgamma or scipy_gammaln
        self.sigmoid = sigmoid or (lambda x: 0.5 * (1.0 + xp.tanh(0.5 * x)))
        self.softplus = softplus or (lambda x: xp.logaddexp(0.0, x))
        self.log_sigmoid = log_sigmoid or (lambda x: -xp.logaddexp(0.0, -x))
        self.relu = relu or (lambda x: xp.maximum(x, 0.0))
        self.const = const or (lambda value: xp.asarray(value))

    def sum(self, x, axis):
        return self.xp.sum(x, axis=axis)

    def mean(self, x, axis):
        return self.xp.mean(x, axis=axis)

    def concat(self, parts, axis):
        if axis < 0 and _broadcast_needed(parts, axis):
            # every axis but the joined one broadcasts (a constant column beside per-row
            # values: concat([[0.0], x @ W]) for a reference category): add zeros shaped
            # like each part's first slice along the axis
            edge = (Ellipsis, slice(0, 1)) + (slice(None),) * (-axis - 1)
            zeros = self.xp.zeros_like(parts[0][edge])
            for p in parts[1:]:  # (not sum(): this module's sum builds an expression)
                zeros = zeros + self.xp.zeros_like(p[edge])
            parts = [p + zeros for p in parts]
        return self.xp.concatenate(parts, axis=axis)

    def stack(self, parts, axis):
        return self.xp.stack(parts, axis=axis)

    def cumsum(self, x, axis):
        return self.xp.cumsum(x, axis=axis)

    def expand_dims(self, x, axis):
        return self.xp.expand_dims(x, axis)

    def where(self, condition, x, y):
        return self.xp.where(condition, x, y)

    def reshape(self, x, shape):
        """The trailing axes of x holding prod(shape) entries, as ``shape``."""
        kind = getattr(x, "type", None)  # PyTensor's static sizes (None: known only at run time)
        dims = tuple(kind.shape) if hasattr(kind, "shape") else np.shape(x)
        size, k, held = int(np.prod(shape)), 0, 1
        while held < size and k < len(dims) and dims[-k - 1] is not None:
            k, held = k + 1, held * int(dims[-k - 1])
        if held != size:
            raise ValueError(f"kq.reshape to {tuple(shape)}: the trailing axes of a value of "
                             f"shape {tuple(dims)} do not hold {size} entries")
        lead = tuple(x.shape[i] for i in range(len(dims) - k))  # symbolic on PyTensor
        return self.xp.reshape(x, lead + tuple(shape))

    def logsumexp(self, x, axis):
        top = self.xp.max(x, axis=axis, keepdims=True)
        total = self.xp.sum(self.xp.exp(x - top), axis=axis)
        return self.xp.log(total) + self.xp.squeeze(top, axis)


def scipy_gammaln(x):
    """scipy.special.gammaln, imported when first called: the core's only hard dependency
    is NumPy (klqp.densities and klqp.transforms use this one too)."""
    from scipy.special import gammaln
    return gammaln(x)


#: NumPy's namespace: what results and the CLI evaluate with.
NumpyOps = ArrayOps(np, const=lambda value: np.asarray(value, dtype=float))


def _axis_key(node: Expr, x) -> tuple:
    """The NumPy key of an int/slice index node on its (negative) axis, after checking
    the number of axes a NumPy-style tuple index named."""
    rank, axis = node.attr("rank"), node.attr("axis", -1)
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{node!r} names {rank} axes, but the value has {x.ndim} (a per-row "
                         "value counts its rows); write x[..., k] for the last axis")
    at = node.attr("at") if node.op == "index" else slice(node.attr("start"), node.attr("stop"))
    return (Ellipsis, at) + (slice(None),) * (-axis - 1)


def _compare(op: str, a, b):
    if op == "greater":
        return a > b
    if op == "greater_equal":
        return a >= b
    if op == "less":
        return a < b
    return a <= b


def evaluate(expr: Expr, env: Mapping[str, Any], ops: Any = NumpyOps) -> Any:
    """Evaluate ``expr`` with variable values from ``env`` using the namespace ``ops``.

    >>> from klqp.expr import Expr, evaluate
    >>> x = Expr("var", (), (("name", "x"),))
    >>> float(evaluate(2.0 * x + 1.0, {"x": 3.0}))
    7.0
    """
    memo: dict[int, Any] = {}

    def ev(node: Expr):
        key = id(node)
        if key in memo:
            return memo[key]
        op = node.op
        if op == "var":
            out = env[node.attr("name")]
        elif op == "const":
            out = ops.const(node.attr("value"))
        else:
            a = [ev(arg) for arg in node.args]
            if op == "add":
                out = a[0] + a[1]
            elif op == "sub":
                out = a[0] - a[1]
            elif op == "mul":
                out = a[0] * a[1]
            elif op == "div":
                out = a[0] / a[1]
            elif op == "pow":
                out = a[0] ** a[1]
            elif op == "matmul":
                out = a[0] @ a[1]
            elif op == "neg":
                out = -a[0]
            elif op in ("index", "slice"):
                out = a[0][a[1]] if len(a) == 2 else a[0][_axis_key(node, a[0])]
            elif op in _AXIS:
                out = getattr(ops, op)(a[0], node.attr("axis"))
            elif op in _ELEMENTWISE2:
                out = getattr(ops, op)(a[0], a[1])
            elif op in _COMPARE:
                out = _compare(op, a[0], a[1])
            elif op == "where":
                out = ops.where(a[0], a[1], a[2])
            elif op == "reshape":
                out = ops.reshape(a[0], node.attr("shape"))
            elif op in _JOIN:
                out = getattr(ops, op)(a, node.attr("axis"))
            elif op in _UNARY:
                out = getattr(ops, op)(a[0])
            else:
                raise ValueError(f"unknown expression operator {op!r}")
        memo[key] = out
        return out

    return ev(expr)
