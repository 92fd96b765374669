"""Flagship example: a global + local model on 100,000 rows, fitted by minibatches.

    theta ~ Normal(0, 1)              global: one slope for the whole data set
    sigma ~ HalfNormal(2)             global: observation noise
    z_i   ~ Normal(theta * x_i, 0.7)  local: one latent per row
    y_i   ~ Normal(z_i, sigma)

klqp puts N/b on the likelihood and on the local KL, 1 on the global KL, and s = b/N
on everything when scale_cost_to_minibatch=True; `kq.explain` prints exactly that.

    python examples/hierarchical.py --backend numpyro
"""

from __future__ import annotations

import time

import numpy as np

import klqp as kq
from klqp.cli import example_parser
from klqp import schedules


TOTAL_SIZE = 100_000  # rows the example makes by default; `klqp explain` reads it


def make_data(n: int, seed: int = 0, theta=1.5, sigma=1.0):
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
    parser = example_parser(__doc__, steps=20_000, batch_size=2000, rows=TOTAL_SIZE)
    args = parser.parse_args(argv)

    data, truth = make_data(args.rows, args.seed)
    model = build_model()
    settings = dict(total_size=args.rows, batch_size=args.batch_size, beta=1.0,
                    scale_cost_to_minibatch=True)
    print(kq.explain(model, **settings))

    start = time.perf_counter()
    result = kq.fit(model, data, backend=args.backend, steps=args.steps, seed=args.seed,
                    learning_rate=schedules.linear(0.1, 0.01, args.steps), **settings)
    seconds = time.perf_counter() - start

    print(f"\nfitted {args.rows:,} rows, {result.steps:,} steps of {args.batch_size} rows "
          f"on {args.backend} in {seconds:.1f} s")
    print(result.summary())
    for name, value in truth.items():
        print(f"{name}: q mean {float(result.mean(name)):.3f} +- {float(result.std(name)):.3f}"
              f"   (value that made the data: {value})")
    theta_opt, sigma_opt, z_mean_opt, z_sd_opt = mean_field_optimum(data)
    print(f"mean-field optimum (closed-form coordinate ascent): theta {theta_opt:.3f}, "
          f"sigma {sigma_opt:.3f}, z sd {z_sd_opt:.3f}")
    print(f"q's z means vs that optimum: RMS difference "
          f"{np.sqrt(np.mean((result.mean('z') - z_mean_opt) ** 2)):.3f} "
          f"(z's q sd is about {z_sd_opt:.2f})")
    return result


def mean_field_optimum(data, iterations: int = 500):
    """The optimum this model's q approaches for large N, by coordinate ascent: given
    theta and sigma (whose q is narrow at this N), q(z_i) is the exact Gaussian
    conditional; then theta and sigma maximize the expected log-likelihood."""
    x, y = data["x"], data["y"]
    theta, var = 0.0, 1.0
    for _ in range(iterations):
        z_var = 1.0 / (1.0 / 0.49 + 1.0 / var)
        z_mean = z_var * (theta * x / 0.49 + y / var)
        var = np.mean((y - z_mean) ** 2 + z_var)
        theta = (x @ z_mean) / (x @ x)
    return theta, np.sqrt(var), z_mean, np.sqrt(z_var)


if __name__ == "__main__":
    main()
