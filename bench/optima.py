"""Exact references for bench/convergence.py: closed-form ELBOs and full-batch optima.

The Poisson log-normal model (bench/cases.py ``poisson_klqp``) has every expectation of
its ELBO in closed form under klqp's q (Gaussian in w, in log tau and in each u_i):

    E[k_i eta_i - exp(eta_i)] with eta_i = x_i . w + u_i:  E exp(eta_i) =
        exp(x_i . m_w + sum_j x_ij^2 s_wj^2 / 2 + m_ui + s_ui^2 / 2)
    E log N(u_i | 0, tau) = -log(2 pi)/2 - m_t - (m_ui^2 + s_ui^2) exp(-2 m_t + 2 s_t^2) / 2
    E log HalfNormal(tau | 1) + log tau = log 2 - log(2 pi)/2 - exp(2 m_t + 2 s_t^2) / 2 + m_t

The reference optimum maximizes that ELBO over all 2N + 8 numbers with full batches:
rows by exact Newton given the globals (they are independent), globals by L-BFGS given
the rows, alternated, then polished jointly by L-BFGS; ``reference`` reports the
gradient norm at the end so the optimum can be trusted.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln

HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)
ENTROPY = 0.5 * np.log(2 * np.pi * np.e)


def poisson_elbo(data: dict, w_loc, w_scale, tau_loc, tau_scale, u_loc, u_scale) -> float:
    """The full-data ELBO (nats) of q; tau's q is Normal(tau_loc, tau_scale) in log tau."""
    x, k = data["x"], data["k"]
    eta_mean = x @ w_loc + u_loc
    e_exp = np.exp(x @ w_loc + 0.5 * (x**2) @ w_scale**2 + u_loc + 0.5 * u_scale**2)
    loglik = np.sum(k * eta_mean - e_exp - gammaln(k + 1))
    inv_tau2 = np.exp(-2 * tau_loc + 2 * tau_scale**2)
    local_prior = np.sum(-HALF_LOG_2PI - tau_loc - 0.5 * (u_loc**2 + u_scale**2) * inv_tau2)
    local_entropy = np.sum(np.log(u_scale)) + len(u_loc) * ENTROPY
    w_prior = np.sum(-HALF_LOG_2PI - 0.5 * (w_loc**2 + w_scale**2))
    tau_prior = np.log(2.0) - HALF_LOG_2PI - 0.5 * np.exp(2 * tau_loc + 2 * tau_scale**2) + tau_loc
    global_entropy = np.sum(np.log(w_scale)) + np.log(tau_scale) + 4 * ENTROPY
    return float(loglik + local_prior + local_entropy + w_prior + tau_prior + global_entropy)


def _rows(x, k, g, m, ls, sweeps=60):
    """Each row's (m, log s) maximizing its part of the ELBO given the globals g: Newton
    with the exact 2x2 Hessian and step halving (rows are independent)."""
    w_loc, w_scale, tau_loc, tau_scale = g
    base = np.exp(x @ w_loc + 0.5 * (x**2) @ w_scale**2)
    c = np.exp(-2 * tau_loc + 2 * tau_scale**2)

    def f(m, ls):
        s2 = np.exp(2 * ls)
        return k * m - base * np.exp(m + 0.5 * s2) - 0.5 * (m**2 + s2) * c + ls

    for _ in range(sweeps):
        s2 = np.exp(2 * ls)
        e = base * np.exp(m + 0.5 * s2)
        gm, gl = k - e - m * c, -e * s2 - s2 * c + 1
        if max(np.max(np.abs(gm)), np.max(np.abs(gl))) < 1e-10:
            break
        hmm, hml = -e - c, -e * s2
        hll = -2 * e * s2 - e * s2 * s2 - 2 * s2 * c
        det = hmm * hll - hml**2
        dm = -(hll * gm - hml * gl) / det
        dl = -(-hml * gm + hmm * gl) / det
        step = np.ones_like(m)
        f0 = f(m, ls)
        for _ in range(30):
            ok = f(m + step * dm, ls + step * dl) >= f0
            if ok.all():
                break
            step = np.where(ok, step, step / 2)
        m, ls = m + step * dm, ls + step * dl
    return m, ls


def _unpack(v):
    return v[:3], np.exp(v[3:6]), v[6], np.exp(v[7])


def _global_objective(v, data, m, s):
    g = _unpack(v)
    return -poisson_elbo(data, *g, m, s)


def _global_grad(v, data, m, s):
    w_loc, w_scale, tau_loc, tau_scale = _unpack(v)
    x, k = data["x"], data["k"]
    e = np.exp(x @ w_loc + 0.5 * (x**2) @ w_scale**2 + m + 0.5 * s**2)
    c = np.exp(-2 * tau_loc + 2 * tau_scale**2)
    q = np.sum(m**2 + s**2)
    t2 = np.exp(2 * tau_loc + 2 * tau_scale**2)
    g_wl = x.T @ (k - e) - w_loc
    g_ws = (-(x**2).T @ e * w_scale - w_scale + 1 / w_scale) * w_scale
    n = len(m)
    g_tl = -n + q * c - t2 + 1
    g_ts = (-2 * tau_scale * q * c - 2 * tau_scale * t2 + 1 / tau_scale) * tau_scale
    return -np.concatenate([g_wl, g_ws, [g_tl, g_ts]])


def reference(data: dict, rounds: int = 400, tol: float = 1e-13) -> dict:
    """The maximal ELBO of the Poisson model over klqp's q family, full batch.

    Returns {"elbo": total nats, "elbo_per_row", "params": (w_loc, w_scale, tau_loc,
    tau_scale, u_loc, u_scale), "grad_norm": the largest |d ELBO / d parameter|,
    "rounds"}."""
    x, k = data["x"], data["k"]
    n = len(k)
    v = np.concatenate([np.zeros(3), np.log(np.full(3, 0.05)), [0.0], [np.log(0.05)]])
    m, ls = np.zeros(n), np.full(n, np.log(0.5))
    last = -np.inf
    for r in range(rounds):
        m, ls = _rows(x, k, _unpack(v), m, ls)
        res = minimize(_global_objective, v, jac=_global_grad, args=(data, m, np.exp(ls)),
                       method="L-BFGS-B", options=dict(maxiter=500, gtol=1e-10, ftol=1e-16))
        v = res.x
        elbo = -res.fun
        if abs(elbo - last) < tol * abs(elbo):
            break
        last = elbo
    m, ls = _rows(x, k, _unpack(v), m, ls)
    g = _unpack(v)
    s = np.exp(ls)
    # stationarity: the globals' gradient and the rows' (m, log s) gradient
    e = np.exp(x @ g[0] + 0.5 * (x**2) @ g[1]**2 + m + 0.5 * s**2)
    c = np.exp(-2 * g[2] + 2 * g[3]**2)
    row_grad = np.max(np.abs(np.concatenate([k - e - m * c, -e * s**2 - s**2 * c + 1])))
    glob_grad = np.max(np.abs(_global_grad(v, data, m, s)))
    elbo = poisson_elbo(data, *g, m, s)
    return {"elbo": elbo, "elbo_per_row": elbo / n, "params": (*g, m, s),
            "grad_norm": max(row_grad, glob_grad), "rounds": r + 1}
