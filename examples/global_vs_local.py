"""Global vs local latents, fitted three ways (the Pyro forum question).

Model: mu ~ Normal(0, 10) (global); z_i ~ Normal(mu, 1) (local, one per row);
y_i ~ Normal(z_i, 0.5). Integrating z out, y_i ~ Normal(mu, sqrt(1.25)), so the exact
posterior of mu is Normal in closed form, and q(mu) can be checked against it.

1. in-graph: klqp draws each minibatch from in-memory data and puts N/b on the
   likelihood and on the local KL.
2. streamed: a DataLoader-style loop of shuffled batches (an iterator of dicts) with
   total_size=N; klqp applies the same N/b to each batch, its ragged last batch included.
3. naive: the same loop without any rescaling, what a hand-written Pyro/NumPyro loop
   without `poutine.scale` computes. Per step it is -sum_B log p + KL_global +
   sum_B KL_local, which is klqp's loss with likelihood_weight = beta_local = b/N: the
   global KL counts N/b times too much, so q(mu) is about sqrt(N/b) too wide.

    python examples/global_vs_local.py --backend pymc
"""

from __future__ import annotations

import numpy as np

import klqp as kq
from klqp.cli import example_parser, step_rule
from klqp import schedules


TOTAL_SIZE = 2000  # rows the example makes by default; `klqp explain` reads it


def build_model() -> kq.Model:
    with kq.Model("global_vs_local") as model:
        mu = kq.Global("mu", kq.Normal(0.0, 10.0))
        z = kq.Local("z", kq.Normal(mu, 1.0))
        kq.Observed("y", kq.Normal(z, 0.5))
    return model


def shuffled_batches(y, batch_size, seed):
    """A DataLoader: each pass over it is a new shuffled epoch; the last batch is ragged."""
    class Loader:
        def __init__(self):
            self.rng = np.random.default_rng(seed)

        def __iter__(self):
            order = self.rng.permutation(len(y))
            for start in range(0, len(y), batch_size):
                rows = order[start:start + batch_size]
                yield {"y": y[rows], "row_index": rows}
    return Loader()


def exact_posterior(y):
    precision = 1 / 10.0**2 + len(y) / 1.25
    return y.sum() / 1.25 / precision, precision**-0.5


def mean_field_optimum(y, likelihood_weight=1.0, beta_local=1.0):
    """The optimum of q(mu) q(z_1..N) under klqp's weighted loss (setting its derivatives
    to zero; tests/test_optima.py derives it). Mean-field q(mu) is narrower than the
    exact posterior because it ignores mu's correlation with the z_i."""
    n, T, bl = len(y), likelihood_weight, beta_local
    a = T / 0.25 + bl  # precision of q(z_i): T/0.5^2 + beta_local/1^2
    denom = 1 / 10.0**2 + bl * n
    mu = bl * np.sum(T * y / 0.25 / a) / (denom - bl * n * bl / a)
    return mu, np.sqrt(1 / denom)


def main(argv=None):
    parser = example_parser(__doc__, steps=6000, batch_size=100, rows=TOTAL_SIZE)
    args = parser.parse_args(argv)
    n, b = args.rows, args.batch_size

    rng = np.random.default_rng(args.seed)
    y = 2.0 + rng.normal(size=n) + 0.5 * rng.normal(size=n)
    model = build_model()
    common = dict(backend=args.backend, steps=args.steps, seed=args.seed,
                  learning_rate=schedules.linear(0.05, 1e-3, args.steps), **step_rule(args))
    results = {
        "in-graph": kq.fit(model, {"y": y}, batch_size=b, **common),
        "streamed": kq.fit(model, shuffled_batches(y, b, args.seed), total_size=n, batch_size=b,
                           **common),
        "naive": kq.fit(model, shuffled_batches(y, b, args.seed), total_size=n, batch_size=b,
                        likelihood_weight=b / n, beta_local=b / n, **common),
    }
    print("The naive loop is this objective (note the weights):")
    print(kq.explain(model, total_size=n, batch_size=b, likelihood_weight=b / n, beta_local=b / n))
    mean, sd = exact_posterior(y)
    mf_mean, mf_sd = mean_field_optimum(y)
    print(f"\nexact posterior of mu:         mean {mean:.4f}, sd {sd:.4f}")
    print(f"mean-field optimum of q(mu):    mean {mf_mean:.4f}, sd {mf_sd:.4f}   "
          "(what a correct fit approaches)")
    print(f"{'way':<10} {'q(mu) mean':>11} {'q(mu) sd':>9} {'sd / mean-field optimum':>24}")
    for way, r in results.items():
        print(f"{way:<10} {float(r.mean('mu')):11.4f} {float(r.std('mu')):9.4f} "
              f"{float(r.std('mu')) / mf_sd:24.2f}")
    print(f"sqrt(N/b) = {np.sqrt(n / b):.2f}: the naive loop's q(mu) is that much too wide")
    return results, (mf_mean, mf_sd)


if __name__ == "__main__":
    main()
