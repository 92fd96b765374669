"""Small neural blocks for model expressions: Dense, MLP, and amortized encoders.

A block declares its weights in the current model when it is built: as ``kq.Param``
(point estimates, no prior) by default, or as ``kq.Global`` latents with ``prior=``
(a Bayesian neural network). Calling a block on an expression gives an expression.

>>> import klqp as kq
>>> with kq.Model("net") as m:
...     x = kq.Data("x", shape=(4,))
...     net = kq.nn.MLP("net", [4, 8, 1], activation="tanh")
...     kq.Observed("y", kq.Normal(net(x)[..., 0], 1.0))
>>> [v.name for v in m.params]
['net_W0', 'net_b0', 'net_W1', 'net_b1']
"""

from __future__ import annotations

from typing import Optional, Sequence

from .distributions import Distribution
from .expr import Expr, concat, relu, sigmoid, softplus, tanh
from .model import Global, ModelError, Param, column

__all__ = ["Dense", "MLP", "amortize", "ACTIVATIONS"]

ACTIVATIONS = {None: None, "linear": None, "relu": relu, "tanh": tanh, "softplus": softplus,
               "sigmoid": sigmoid}


def _activation(name):
    if name not in ACTIVATIONS:
        raise ModelError(f"activation={name!r}; choose one of {sorted(k for k in ACTIVATIONS if k)}")
    return ACTIVATIONS[name]


class Dense:
    """``activation(x @ W + b)`` with W of shape (n_in, n_out), named ``<name>_W``, ``<name>_b``.

    prior: None for point weights (kq.Param, Glorot init), or a distribution such as
    ``kq.Normal(0, 1)`` to make W and b Global latents (Bayes by Backprop).
    """

    def __init__(self, name: str, n_in: int, n_out: int, activation: Optional[str] = None,
                 prior: Optional[Distribution] = None, *, _names=None):
        self.name, self.n_in, self.n_out = name, int(n_in), int(n_out)
        self.activation = _activation(activation)
        w_name, b_name = _names or (f"{name}_W", f"{name}_b")
        if prior is None:
            self.weight = Param(w_name, (self.n_in, self.n_out), init="glorot")
            self.bias = Param(b_name, (self.n_out,), init="zeros")
        else:
            self.weight = Global(w_name, prior, shape=(self.n_in, self.n_out))
            self.bias = Global(b_name, prior, shape=(self.n_out,))

    def __call__(self, x) -> Expr:
        out = x @ self.weight + self.bias
        return self.activation(out) if self.activation else out


class MLP:
    """Dense layers of ``sizes`` = [n_in, hidden..., n_out]; ``activation`` between
    layers, ``out_activation`` after the last. Weights are named ``<name>_W<k>``,
    ``<name>_b<k>``."""

    def __init__(self, name: str, sizes: Sequence[int], activation: str = "relu",
                 out_activation: Optional[str] = None, prior: Optional[Distribution] = None):
        if len(sizes) < 2:
            raise ModelError(f"MLP {name!r}: sizes={list(sizes)} needs at least [n_in, n_out]")
        self.name, self.sizes = name, [int(s) for s in sizes]
        self.layers = []
        for k, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            last = k == len(self.sizes) - 2
            self.layers.append(Dense(f"{name}{k}", n_in, n_out,
                                     out_activation if last else activation, prior,
                                     _names=(f"{name}_W{k}", f"{name}_b{k}")))

    def __call__(self, x) -> Expr:
        for layer in self.layers:
            x = layer(x)
        return x


class amortize:  # noqa: N801 - reads as a function at the call site
    """An encoder for ``kq.Local(..., encoder=amortize(net, "col", ...))``.

    ``net`` maps the named columns (joined on their last axis) to 2*K numbers per row for
    a latent of shape (K,): the first K are q(z_i)'s unconstrained mean, the last K give
    its scale through softplus (plus 1e-4, so a scale never reaches 0).
    """

    def __init__(self, net, *columns: str):
        if not columns:
            raise ModelError("amortize(net, ...): name the columns the encoder reads")
        self.net, self.columns = net, columns

    def for_latent(self, name: str, shape: tuple) -> tuple:
        if len(shape) != 1:
            raise ModelError(f"Local {name!r}: an amortized latent needs shape=(K,), got {shape}")
        k = shape[0]
        inputs = [column(c) for c in self.columns]
        out = self.net(inputs[0] if len(inputs) == 1 else concat(inputs))
        return out[..., :k], softplus(out[..., k:2 * k]) + 1e-4
