"""Lowering a klqp problem to PyMC for one minibatch of b rows (static: PyMC's groups
need it): a ``pm.Model`` (``build_pm_model``: observations with ``total_size=N``, locals
with the batch shape (b, *shape)), a mean-field ``Approximation`` with one
``MeanFieldGroup`` per block and given parameters (``build_groups``; a free local's are
the batch rows of N-row arrays, an amortized local's its encoder), and a ``KL`` operator
whose ``apply`` is ``klqp.objective.loss`` of the three terms (``KlqpKL``), so PyMC's
``ObjectiveFunction`` trains klqp's objective and nothing here restates the formula.
The local KL's N/b is applied here (PyMC refuses ``total_size`` on unobserved
variables); the groups' noise is replaced by explicit inputs through PyMC's
``more_replacements`` (so ``kq.compile`` can fix it); a padded stream batch's mask
enters every per-row sum. docs/backends.md ("PyMC") explains the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import disconnected_grad
from pytensor.graph.replace import graph_replace
from pymc.variational.approximations import MeanFieldGroup
from pymc.variational.inference import Inference
from pymc.variational.operators import KL
from pymc.variational.opvi import Approximation

from klqp import objective
from klqp.expr import evaluate
from klqp.objective import Terms
from klqp.problem import Problem

from klqp.transforms import ON_U, value_on_u

from .tensors import (Batch, PytensorOps, QParams, as_float, float_dtype, inv_softplus_pt,
                      pm_distribution, prior_on_u)

__all__ = ["Blocks", "KlqpKL", "Lowered", "lower"]

_LOG_SQRT_2PI = float(0.5 * np.log(2.0 * np.pi))  # a Python float: PyTensor casts it to floatX


# -- the blocks of q -------------------------------------------------------------------------

@dataclass(frozen=True)
class Blocks:
    """Which latents form which block, by name, and N: all the PyMC side needs to know of
    the spec once the model is built (so compiled objects hold no kq.Model)."""

    globals: tuple
    locals: tuple
    observed: tuple
    total_size: int
    potentials: tuple = ()      # kq.Potential terms (pm.Potential), and which are per row
    per_row_potentials: tuple = ()

    @classmethod
    def of(cls, problem: Problem) -> "Blocks":
        spec = problem.model
        names = lambda vs: tuple(v.name for v in vs)
        return cls(names(spec.globals), names(spec.locals), names(spec.observed),
                   problem.total_size, names(spec.potentials),
                   names(v for v in spec.potentials if v.per_row))


def _flat(parts: list):
    return pt.concatenate([pt.as_tensor(p).reshape((-1,)) for p in parts])


# -- the PyMC model and its approximation ----------------------------------------------------

def build_pm_model(problem: Problem, batch: Batch, point: dict,
                   scaled: bool = True) -> tuple[pm.Model, dict]:
    """The PyMC model of the spec for one batch; returns (model, {name: random variable}).
    ``scaled=False`` leaves out the observations' ``total_size`` (unscaled row densities)."""
    spec, b = problem.model, batch.capacity
    n = problem.total_size if scaled else None
    rvs: dict = {}
    with pm.Model(name="") as pm_model:
        env = {**{v.name: batch.columns[v.name] for v in spec.data_vars}, **point}
        for v in spec.vars.values():
            if v.role in ("data", "param"):
                continue
            params = {k: evaluate(e, env, PytensorOps) for k, e in v.dist.params}
            if v.dist.family in ON_U and v.role != "observed":  # its site holds u
                cls, kwargs = prior_on_u, {"family": v.dist.family, "params": params,
                                           "value_shape": v.dist.value_shape}
            else:
                cls, kwargs = pm_distribution(v.dist.family, params, v.dist.component)
            if v.role == "observed":
                rvs[v.name] = cls(v.name, **kwargs, observed=batch.columns[v.name], total_size=n)
                continue
            rows = (b,) if v.role == "local" else ()
            if v.transform == "ordered":  # x_0 = u_0, x_k = x_{k-1} + exp(u_k), as NumPyro's
                kwargs = {**kwargs, "transform": pm.distributions.transforms.ordered}
            # A constant initval: the default initial point would read the batch inputs.
            rvs[v.name] = cls(v.name, **kwargs, shape=rows + tuple(v.shape),
                              initval=as_float(spec.dummy_value(v, rows=b)))
            env[v.name] = rvs[v.name]
            if v.dist.family in ON_U:  # the model reads a Dirichlet's p, an LKJ's L
                env[v.name] = value_on_u(v.dist.family, rvs[v.name], pt)
        for v in spec.potentials:  # unscaled: block_terms applies N/b to the per-row ones
            rvs[v.name] = pm.Potential(v.name, evaluate(v.expr, env, PytensorOps))
    return pm_model, rvs


def local_q(problem: Problem, batch: Batch, q: QParams) -> dict:
    """Each local latent's (loc, rho) for this batch's rows: a free local's given rows,
    an amortized local's encoder on the batch's columns (and the point parameters)."""
    out = {}
    env = {**batch.columns, **q.point}
    for v in problem.model.locals:
        if v.amortized:
            loc, scale = (evaluate(e, env, PytensorOps) for e in v.encoder)
            out[v.name] = (loc, inv_softplus_pt(scale))
        else:
            out[v.name] = (q.local_loc[v.name], q.local_rho[v.name])
    return out


def build_groups(blocks: Blocks, pm_model: pm.Model, rvs: dict, q: QParams,
                 local: dict) -> dict:
    """One MeanFieldGroup per block ("global", "local") with q's given parameters."""
    groups = {}
    with pm_model:
        if blocks.globals:
            groups["global"] = MeanFieldGroup([rvs[k] for k in blocks.globals],
                                              params={"mu": q.global_mu, "rho": q.global_rho})
        if blocks.locals:
            groups["local"] = MeanFieldGroup(
                [rvs[k] for k in blocks.locals],
                params={"mu": _flat([local[k][0] for k in blocks.locals]),
                        "rho": _flat([local[k][1] for k in blocks.locals])})
    return groups


# -- klqp's terms from PyMC's pieces ---------------------------------------------------------

def _row_sums(x, b: int):
    """Per-row sums of a (b, ...) tensor; a tensor of one value per row stays as it is."""
    x = pt.as_tensor(x)
    return x if x.ndim == 1 else x.reshape((b, -1)).sum(axis=1)


def _masked_sum(rows, mask):
    return rows.sum() if mask is None else (rows * mask).sum()


def _local_logq_rows(group: MeanFieldGroup, value_names: list, b: int, stl: bool = False):
    """log q of each batch row of the local block, shape (b,).

    The same Gaussian density MeanFieldGroup.symbolic_logq_not_scaled sums over the whole
    group, kept per element so rows can be masked and the local KL carries its own N/b.
    stl: "sticking the landing" (Roeder et al. 2017): log q(u) with q's mean and scale
    held constant, so only the path through the draw u = mean + std * z0 has a gradient.
    """
    z0 = group.symbolic_initial[0]
    if stl:
        mean, std = disconnected_grad(group.mean), disconnected_grad(group.std)
        u = group.mean + group.std * z0
        elementwise = -0.5 * ((u - mean) / std) ** 2 - _LOG_SQRT_2PI - pt.log(std)
    else:
        elementwise = -0.5 * z0**2 - _LOG_SQRT_2PI - pt.log(group.std)
    rows = 0.0
    for name in value_names:
        slc = group.ordering[name][1]
        rows = rows + elementwise[slc].reshape((b, -1)).sum(axis=1)
    return rows


def _sample(approx: Approximation, nodes: list, k: int) -> list:
    """``nodes`` at sample ``k`` of the approximation's noise (``symbolic_single_sample``
    is sample 0); the antithetic pair is samples 0 and 1."""
    nodes = approx.to_flat_input(nodes)
    return graph_replace(nodes, {i: r[k] for i, r in zip(approx.inputs, approx.symbolic_randoms)},
                         strict=False)


def block_terms(blocks: Blocks, approx: Approximation, rvs: dict, groups: dict,
                batch: Batch, samples: int = 1, stl: bool = False) -> Terms:
    """klqp's terms in full-data nats, as graphs of the groups' symbolic noise,
    averaged over ``samples`` noise samples (2: the antithetic pair of global draws).

    log p comes from ``pm.Model.logp(jacobian=True, sum=False)`` (observations already
    carry PyMC's N/b from total_size), evaluated at q's draw of each sample.
    """
    names = blocks.globals + blocks.locals + blocks.observed + blocks.potentials
    logps = approx.model.logp(vars=[rvs[k] for k in names], jacobian=True, sum=False)
    each = [_sample_terms(blocks, approx, groups, batch, dict(zip(names, _sample(approx, logps, k))),
                          stl) for k in range(samples)]
    if samples == 1:
        return each[0]
    return Terms(*(sum(t.values()[i] for t in each) / samples for i in range(len(Terms.FIELDS))))


def _sample_terms(blocks: Blocks, approx: Approximation, groups: dict, batch: Batch,
                  logps: dict, stl: bool) -> Terms:
    pm_model, n, b, mask = approx.model, blocks.total_size, batch.capacity, batch.mask
    # PyMC's log-density of an integer observation is float64 even under floatX=float32
    # (int64 * float32 upcasts); cast back so the terms and gradients stay in floatX.
    logps = {k: pt.cast(lp, float_dtype()) for k, lp in logps.items()}

    # PyMC scaled each observation by N/b with b the (padded) batch length; a padded
    # batch's real length is batch.count.
    loglik = pt.as_tensor(0.0)  # a model may have only kq.Potential terms
    if blocks.observed:
        obs_rows = sum(_row_sums(logps[k], b) for k in blocks.observed)
        loglik = _masked_sum(obs_rows, mask) * (b / batch.count if mask is not None else 1.0)

    kl_global = pt.as_tensor(0.0)
    if blocks.globals:
        kl_global = groups["global"].logq - sum(logps[k].sum() for k in blocks.globals)

    kl_local = pt.as_tensor(0.0)
    if blocks.locals:
        value_names = [pm_model.rvs_to_values[pm_model[k]].name for k in blocks.locals]
        logq_rows = _local_logq_rows(groups["local"], value_names, b, stl)
        logp_rows = sum(_row_sums(logps[k], b) for k in blocks.locals)
        kl_local = (n / batch.count) * _masked_sum(logq_rows - logp_rows, mask)

    potential = pt.as_tensor(0.0)
    for k in blocks.potentials:
        if k in blocks.per_row_potentials:
            potential = potential + (n / batch.count) * _masked_sum(_row_sums(logps[k], b), mask)
        else:
            potential = potential + logps[k].sum()
    return Terms(loglik=loglik, kl_global=kl_global, kl_local=kl_local, potential=potential)


def cost_scale(approx: Approximation, batch: Batch, total_size: int):
    """s: b/N when PyMC's ``approx.scale_cost_to_minibatch`` flag is set, else 1.

    Not 1 / ``approx.symbolic_normalizing_constant``: in PyMC 6.4 that constant divides N
    by EVERY axis of an observation with two or more axes (``get_scaling`` receives the
    1-tuple ``constant_fold([shape])``), e.g. N/b * N/6 for a (b, 6) image batch."""
    return pt.switch(approx._scale_cost_to_minibatch, batch.count / total_size, 1.0)


def weight_tensors(problem: Problem, step) -> tuple[dict, list]:
    """Each weight as a PyTensor scalar at the symbolic ``step``, and the (name, shared)
    pairs of the runtime weights (``klqp.objective.Weights.runtime``: a constant, a
    kq.Shared) that ``set_runtime_weights`` fills before each call, so fits that differ
    only in them share a compiled function. A schedule is evaluated at ``step``."""
    runtime = problem.weights.runtime()
    tensors, holders = {}, []
    for name, w in problem.weights.items():
        if name in runtime:
            holder = pytensor.shared(as_float(runtime[name]), name=name)
            holders.append((name, holder))
            tensors[name] = holder
        else:
            tensors[name] = pt.cast(pt.as_tensor(w(step, xp=pt)), float_dtype())
    return tensors, holders


def set_runtime_weights(holders: list, problem: Problem) -> None:
    """Fill ``weight_tensors``' holders from ``problem``'s weights (the fit or objective
    that calls the compiled function now, not necessarily the one it was built for)."""
    values = problem.weights.runtime()
    for name, holder in holders:
        holder.set_value(as_float(values[name], holder.dtype))


class KlqpKL(KL):
    """PyMC's KL operator with klqp's objective: ``apply`` builds the three terms from the
    model's log-densities and the groups' log q, and returns ``klqp.objective.loss`` of
    them. PyMC's ObjectiveFunction then samples it, differentiates it and builds the
    optimizer's updates as for any KL operator."""

    def __init__(self, approx, blocks: Blocks, rvs: dict, groups: dict, batch: Batch,
                 weights: dict, samples: int = 1, stl: bool = False):
        super().__init__(approx)
        self.blocks, self.rvs, self.groups, self.batch = blocks, rvs, groups, batch
        self.weights = weights
        self.samples, self.stl = samples, stl
        self._terms: Optional[Terms] = None

    def terms(self) -> Terms:
        """The three terms, unsampled (built once; the loss and the history share them)."""
        if self._terms is None:
            self._terms = block_terms(self.blocks, self.approx, self.rvs, self.groups, self.batch,
                                      self.samples, self.stl)
        return self._terms

    def apply(self, f):
        s = cost_scale(self.approx, self.batch, self.blocks.total_size)
        return objective.loss(self.terms(), cost_scale=s, **self.weights)


class KlqpInference(Inference):
    """``pm.KLqp`` with the klqp operator in place of PyMC's KL."""

    def __init__(self, approx, **operator_kwargs):
        super().__init__(KlqpKL, approx, None, **operator_kwargs)


@dataclass
class Lowered:
    """A problem lowered for one batch shape: the PyMC objects and how to sample them."""

    pm_model: pm.Model
    rvs: dict
    groups: dict
    approx: Approximation
    inference: KlqpInference
    weights: dict
    runtime_weights: list
    noise_replacements: dict
    cost_scale: Any = None  # s, a PyTensor scalar

    @property
    def objective(self):
        """PyMC's ObjectiveFunction of the KlqpKL operator."""
        return self.inference.objective

    @property
    def operator(self) -> KlqpKL:
        return self.objective.op

    def sampled(self, nodes: list) -> list:
        """Nodes with the groups' noise replaced by this batch's noise inputs."""
        return self.approx.set_size_and_deterministic(list(nodes), None, 0,
                                                      self.noise_replacements)

    def loss(self):
        """The loss as PyMC's ObjectiveFunction builds it (KlqpKL.apply, then sampled)."""
        return self.objective(None, more_replacements=self.noise_replacements)

    def records(self, loss) -> dict:
        """Per-step figures for the history: loss, elbo, the terms and the weights."""
        t = self.operator.terms()
        t = Terms(*self.sampled(list(t.values())))
        return {"loss": loss, "elbo": objective.elbo(t), "loglik": t.loglik,
                "kl_global": t.kl_global, "kl_local": t.kl_local, "potential": t.potential,
                **self.weights}


def lower(problem: Problem, batch: Batch, q: QParams, noise: dict, step,
          weights: Optional[tuple] = None, antithetic: bool = False, stl: bool = False) -> Lowered:
    """Build the PyMC model, its approximation and the klqp operator for ``batch``.

    noise: per latent, standard-normal PyTensor variables of q's shape (locals: (b, *shape)).
    step: the symbolic step the schedules are evaluated at. weights: ``weight_tensors``'
    result when the caller already made them (the local step reads them too).
    antithetic: the loss averages the global draws +eps and -eps (two noise samples,
    the locals' the same in both). stl: sticking the landing for the local block.
    """
    blocks = Blocks.of(problem)
    pm_model, rvs = build_pm_model(problem, batch, q.point)
    groups = build_groups(blocks, pm_model, rvs, q, local_q(problem, batch, q))
    approx = Approximation(list(groups.values()), model=pm_model)
    approx.scale_cost_to_minibatch = problem.scale_cost_to_minibatch
    replacements = {}
    for role, names in (("global", blocks.globals), ("local", blocks.locals)):
        if role in groups:
            flat = _flat([noise[k] for k in names])
            pair = [flat, -flat] if role == "global" else [flat, flat]
            replacements[groups[role].symbolic_initial] = (pt.stack(pair) if antithetic
                                                           else flat[None, :])
    weights, runtime_weights = weights or weight_tensors(problem, step)
    inference = KlqpInference(approx, blocks=blocks, rvs=rvs, groups=groups, batch=batch,
                              weights=weights, samples=2 if antithetic else 1, stl=stl)
    return Lowered(pm_model=pm_model, rvs=rvs, groups=groups, approx=approx, inference=inference,
                   weights=weights, runtime_weights=runtime_weights,
                   noise_replacements=replacements,
                   cost_scale=cost_scale(approx, batch, problem.total_size))
