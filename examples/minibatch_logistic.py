"""Minibatch logistic regression with scale_cost_to_minibatch on and off.

The flag multiplies the whole loss by s = b/N (on) or 1 (off). The optimum does not
move; only the gradient's size changes, by exactly b/N. This example prints
`kq.explain` for both settings, the gradient norms at the same point, and the fitted
q of both runs.

    python examples/minibatch_logistic.py --backend pymc
"""

from __future__ import annotations

import numpy as np

import klqp as kq
from klqp.cli import example_parser, step_rule
from klqp import schedules

W_TRUE = np.array([1.0, -2.0, 0.5, 0.0])
TOTAL_SIZE = 20_000  # rows the example makes by default; `klqp explain` reads it


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(W_TRUE)))
    p = 1 / (1 + np.exp(-(x @ W_TRUE + 0.3)))
    return {"x": x, "y": (rng.random(n) < p).astype(float)}


def build_model() -> kq.Model:
    with kq.Model("logistic_regression") as model:
        x = kq.Data("x", shape=(len(W_TRUE),))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(len(W_TRUE),))
        intercept = kq.Global("intercept", kq.Normal(0.0, 5.0))
        kq.Observed("y", kq.Bernoulli(logits=x @ w + intercept))
    return model


def main(argv=None):
    parser = example_parser(__doc__, steps=5000, batch_size=200, rows=TOTAL_SIZE)
    args = parser.parse_args(argv)
    n, b = args.rows, args.batch_size
    data, model = make_data(n, args.seed), build_model()

    results, grad_norms = {}, {}
    for scaled in (True, False):
        print(kq.explain(model, total_size=n, batch_size=b, scale_cost_to_minibatch=scaled))
        print()
        objective = kq.compile(model, data, backend=args.backend, batch_size=b,
                               scale_cost_to_minibatch=scaled)
        params = objective.init_params(seed=args.seed)
        rng = np.random.default_rng(args.seed)
        indices = rng.choice(n, b, replace=False)
        noise = {v.name: rng.standard_normal(v.shape) for v in model.latents}
        grad = objective.grad(params, indices=indices, noise=noise)
        grad_norms[scaled] = np.sqrt(sum(np.sum(g**2) for q in grad.values() for g in q.values()))
        results[scaled] = kq.fit(model, data, backend=args.backend, steps=args.steps,
                                 batch_size=b, scale_cost_to_minibatch=scaled, seed=args.seed,
                                 learning_rate=schedules.linear(0.02, 5e-4, args.steps),
                                 **step_rule(args))

    print(f"gradient norm at the same point, same minibatch and noise: "
          f"on {grad_norms[True]:.4g}, off {grad_norms[False]:.4g}, "
          f"ratio {grad_norms[True] / grad_norms[False]:.6g} (b/N = {b / n:.6g})")
    print(f"final loss (mean of last 200 steps): on {results[True].history['loss'][-200:].mean():.4g}, "
          f"off {results[False].history['loss'][-200:].mean():.4g}")
    print(f"{'':<10} {'w (q mean)':<40} {'intercept':>10}")
    for scaled, r in results.items():
        label = "on" if scaled else "off"
        print(f"{label:<10} {np.array2string(r.mean('w'), precision=3):<40} "
              f"{float(r.mean('intercept')):10.3f}")
    print(f"{'true':<10} {np.array2string(W_TRUE, precision=3):<40} {0.3:10.3f}")
    return results, grad_norms


if __name__ == "__main__":
    main()
