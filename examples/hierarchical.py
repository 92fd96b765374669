"""Flagship example: a global + local model on 100,000 rows, fitted by minibatches.

    theta ~ Normal(0, 1)              global: one slope for the whole data set
    sigma ~ HalfNormal(2)             global: observation noise
    z_i   ~ Normal(theta * x_i, 0.7)  local: one latent per row
    y_i   ~ Normal(z_i, sigma)

klqp puts N/b on the likelihood and on the local KL, 1 on the global KL, and s = b/N
on everything when scale_cost_to_minibatch=True; `kq.explain` prints exactly that, and
how q is fitted: a local step on each batch's rows of z, natural-gradient steps for
theta and sigma. With kq.fit's defaults, 15 epochs reach the exact mean-field optimum
(printed beside q): q's means within one optimum sd, its sds within a few percent.

    python examples/hierarchical.py --backend numpyro
    python examples/hierarchical.py --local-step none --global-step none   # klqp 0.1's rule
"""

from __future__ import annotations

import time

import numpy as np

import klqp as kq
from klqp.cli import example_parser, step_rule


TOTAL_SIZE = 100_000  # rows the example makes by default; `klqp explain` reads it


def make_data(n: int, seed: int = 0, theta=1.5, sigma=1.0):
    """x_i ~ N(0, 1), z_i = theta x_i + 0.7 eps_i, y_i = z_i + sigma eps'_i."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    z = theta * x + 0.7 * rng.normal(size=n)
    return {"x": x, "y": z + sigma * rng.normal(size=n)}, {"theta": theta, "sigma": sigma}


def build_model() -> kq.Model:
    with kq.Model("hierarchical") as model:
        x = kq.Data("x", shape=())
        theta = kq.Global("theta", kq.Normal(0.0, 1.0), shape=())
        sigma = kq.Global("sigma", kq.HalfNormal(2.0))
        z = kq.Local("z", kq.Normal(theta * x, 0.7))
        kq.Observed("y", kq.Normal(z, sigma))
    return model


def main(argv=None):
    parser = example_parser(__doc__, steps=750, batch_size=2000, rows=TOTAL_SIZE, noise=1.0)
    args = parser.parse_args(argv)

    data, truth = make_data(args.rows, args.seed, sigma=args.noise)
    model = build_model()
    settings = dict(total_size=args.rows, batch_size=args.batch_size, beta=1.0,
                    scale_cost_to_minibatch=True)
    print(kq.explain(model, **settings, **step_rule(args)))

    start = time.perf_counter()
    result = kq.fit(model, data, backend=args.backend, steps=args.steps, seed=args.seed,
                    **settings, **step_rule(args))
    seconds = time.perf_counter() - start

    epochs = args.steps * args.batch_size / args.rows
    print(f"\nfitted {args.rows:,} rows, {result.steps:,} steps of {args.batch_size} rows "
          f"({epochs:g} epochs) on {args.backend} in {seconds:.1f} s")
    print(result.summary())
    opt = mean_field_optimum(data)
    q = result.params
    print("\nq against the exact mean-field optimum (the best q of this family; sd*: its sds)")
    print(f"{'':<14} {'q mean':>9} {'optimum':>9} {'|diff|/sd*':>10} {'q sd':>9} {'sd*':>9} "
          f"{'q sd/sd*':>8}")
    rows = [("theta", q["theta"]["loc"], q["theta"]["scale"], opt["theta"]),
            ("log sigma", q["sigma"]["loc"], q["sigma"]["scale"], opt["log_sigma"])]
    for name, mean, sd, (mean_opt, sd_opt) in rows:
        mean, sd = float(mean), float(sd)
        print(f"{name:<14} {mean:9.4f} {mean_opt:9.4f} {abs(mean - mean_opt) / sd_opt:10.2f} "
              f"{sd:9.5f} {sd_opt:9.5f} {sd / sd_opt:8.3f}")
    z_mean_opt, z_sd_opt = opt["z"]
    rms = np.sqrt(np.mean((result.mean("z") - z_mean_opt) ** 2))
    print(f"{'z (100k rows)':<14} RMS of q means - optimum = {rms:.5f} = {rms / z_sd_opt:.4f} sd*;"
          f" median q sd / sd* = {np.median(result.std('z')) / z_sd_opt:.4f}")
    for name, value in truth.items():
        print(f"{name}: q mean {float(result.mean(name)):.3f} +- {float(result.std(name)):.3f}"
              f"   (value that made the data: {value})")
    return result


def mean_field_optimum(data, iterations: int = 1000, tol: float = 1e-13) -> dict:
    """The exact optimum of this model's objective (beta = T = 1) over mean-field Gaussian
    q: q(theta) q(log sigma) q(z_1) ... q(z_N), by coordinate ascent. Each update is the
    closed-form optimum of one block given the others, with the expectations the
    objective has (e.g. E_q[1/sigma^2] = exp(-2 m + 2 v) for q(log sigma) = N(m, v)).

    Returns {"theta": (mean, sd), "log_sigma": (mean, sd), "z": (means, sd)}; a z_i's
    q sd is the same for every row.
    """
    x, y = data["x"], data["y"]
    n = len(x)
    theta_precision = 1.0 + (x @ x) / 0.49      # prior N(0, 1) + sum_i x_i^2 / 0.7^2
    theta, m, v = 0.0, 0.0, 1e-4                # q(theta) mean; q(log sigma) = N(m, v)
    for _ in range(iterations):
        inv_var = np.exp(-2 * m + 2 * v)         # E_q[1 / sigma^2]
        z_var = 1.0 / (1.0 / 0.49 + inv_var)
        z_mean = z_var * (theta * x / 0.49 + y * inv_var)
        theta_new = (x @ z_mean) / 0.49 / theta_precision
        resid = np.sum((y - z_mean) ** 2 + z_var)
        # q(log sigma): maximize E_q[-n u - resid e^{-2u} / 2 + log HalfNormal(e^u; 2) + u]
        # + entropy; Newton in m, with v at its fixed point.
        for _ in range(50):
            a, c = resid * np.exp(-2 * m + 2 * v), np.exp(2 * m + 2 * v) / 4
            m -= (-n + a - c + 1) / (-2 * a - 2 * c)
            v = 1.0 / (2 * resid * np.exp(-2 * m + 2 * v) + np.exp(2 * m + 2 * v) / 2)
        done = abs(theta_new - theta) < tol
        theta = theta_new
        if done:
            break
    return {"theta": (theta, theta_precision ** -0.5), "log_sigma": (m, np.sqrt(v)),
            "z": (z_mean, np.sqrt(z_var))}


if __name__ == "__main__":
    main()
