"""Tempered and cold posteriors where the exact answer is known.

Model: mu ~ Normal(0, 2); y_i ~ Normal(mu, 1.5), i = 1..N. Minimizing klqp's loss with
likelihood weight T and KL weight beta gives the posterior whose likelihood is raised
to T/beta, which for this conjugate model is Normal in closed form:

    precision = 1/2^2 + (T/beta) N / 1.5^2,   mean = (T/beta) sum(y) / 1.5^2 / precision

    python examples/tempered_posterior.py --backend pymc
"""

from __future__ import annotations

import numpy as np

import klqp as kq
from klqp.cli import example_parser, step_rule
from klqp import schedules

PRIOR_SD, NOISE_SD = 2.0, 1.5
TOTAL_SIZE = 1000  # rows the example makes; `klqp explain` reads it
SETTINGS = [  # (beta, likelihood_weight): T/beta = 1 is Bayes, < 1 warm, > 1 cold
    (1.0, 1.0), (4.0, 1.0), (1.0, 0.25), (0.25, 1.0), (1.0, 4.0),
]


def build_model() -> kq.Model:
    with kq.Model("conjugate_normal") as model:
        mu = kq.Global("mu", kq.Normal(0.0, PRIOR_SD))
        kq.Observed("y", kq.Normal(mu, NOISE_SD))
    return model


def exact(y, power):
    precision = 1 / PRIOR_SD**2 + power * len(y) / NOISE_SD**2
    return power * y.sum() / NOISE_SD**2 / precision, precision**-0.5


def main(argv=None):
    parser = example_parser(__doc__, steps=4000, rows=TOTAL_SIZE)
    args = parser.parse_args(argv)

    y = 0.7 + NOISE_SD * np.random.default_rng(args.seed).normal(size=args.rows)
    model = build_model()
    rows = []
    print(f"{'beta':>6} {'T':>6} {'T/beta':>7} | {'q mean':>8} {'exact':>8} | "
          f"{'q sd':>8} {'exact':>8} {'sd ratio':>8}")
    for beta, T in SETTINGS:
        r = kq.fit(model, {"y": y}, backend=args.backend, steps=args.steps, batch_size=100,
                   beta=beta, likelihood_weight=T, scale_cost_to_minibatch=True, seed=args.seed,
                   learning_rate=schedules.linear(0.02, 1e-4, args.steps), **step_rule(args))
        mean, sd = exact(y, T / beta)
        rows.append((beta, T, float(r.mean("mu")), mean, float(r.std("mu")), sd))
        print(f"{beta:6.2f} {T:6.2f} {T / beta:7.3f} | {rows[-1][2]:8.4f} {mean:8.4f} | "
              f"{rows[-1][4]:8.4f} {sd:8.4f} {rows[-1][4] / sd:8.3f}")
    return rows


if __name__ == "__main__":
    main()
