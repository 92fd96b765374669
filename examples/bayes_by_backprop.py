"""Bayes by Backprop on scikit-learn's bundled digits: which KL weight?

A Bayesian neural network (64 -> 32 -> 10, every weight a Global latent with a N(0, 1)
prior) classifies 8x8 digits, fitted three ways:

1. "1/N": the ELBO. In Keras/TFP terms, a per-example mean cross-entropy plus
   KL * 1/N (N = training rows). In klqp: beta = 1 (with scale_cost_to_minibatch=True
   the KL's factor is b/N per step, i.e. 1/N per row of the batch).
2. "Blundell": Blundell et al. (2015) weight batch i of the M in an epoch by
   pi_i = 2^(M-i)/(2^M-1) and the likelihood by 1, so the KL counts once per epoch.
   In klqp: beta_global=schedules.blundell(), likelihood_weight=b/N, s = 1.
3. "tempered": a cold posterior, beta = 0.1 (the KL counts a tenth).

It prints test accuracy, negative log-likelihood and expected calibration error (from
``result.predict``'s draws of the named logits and ``result.elpd`` on the test rows), and,
for the TFP question "my KL is ~1000 but my cross-entropy is ~1", both terms per step
before and after their factors.

    python examples/bayes_by_backprop.py --backend pymc --steps 3000
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import klqp as kq
from klqp.cli import example_parser, step_rule
from klqp import schedules

HIDDEN = 32
TOTAL_SIZE = 1437  # training rows of the digits split below; `klqp explain` reads it


def load(seed=0):
    digits = load_digits()
    x = digits.data / 16.0
    return train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                            stratify=digits.target)


def build_model() -> kq.Model:
    with kq.Model("bnn_digits") as model:
        x = kq.Data("x", shape=(64,))
        net = kq.nn.MLP("net", [64, HIDDEN, 10], activation="relu", prior=kq.Normal(0.0, 1.0))
        logits = kq.Deterministic("logits", net(x))  # kept by name for predictions
        kq.Observed("label", kq.Categorical(logits=logits))
    return model


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expected_calibration_error(probs, labels, bins=10):
    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs((predicted[in_bin] == labels[in_bin]).mean()
                                       - confidence[in_bin].mean())
    return ece


def main(argv=None):
    parser = example_parser(__doc__, steps=4000, batch_size=128)
    parser.add_argument("--plot", default=None, help="save the KL vs cross-entropy plot here")
    args = parser.parse_args(argv)

    x_train, x_test, y_train, y_test = load(args.seed)
    n, b = len(x_train), args.batch_size
    model = build_model()
    ways = {
        "1/N": dict(beta=1.0, scale_cost_to_minibatch=True),
        "Blundell": dict(beta_global=schedules.blundell(), likelihood_weight=b / n),
        "tempered": dict(beta=0.1, scale_cost_to_minibatch=True),
    }
    rows, results = [], {}
    for way, weights in ways.items():
        r = kq.fit(model, {"x": x_train, "label": y_train}, backend=args.backend,
                   steps=args.steps, batch_size=b, seed=args.seed, init_scale=0.05,
                   learning_rate=schedules.linear(0.01, 1e-3, args.steps), **weights,
                   **step_rule(args))
        results[way] = r
        # the predictive probabilities: softmax of the logits averaged over 50 draws of q
        probs = softmax(r.predict({"x": x_test}, num_samples=50, seed=1)["logits"]).mean(0)
        # test NLL = -(held-out log predictive density per row), at the same 50 draws
        nll = -r.elpd({"x": x_test, "label": y_test}, num_samples=50, seed=1).per_row_mean
        rows.append((way, (probs.argmax(1) == y_test).mean(), nll,
                     expected_calibration_error(probs, y_test)))

    print(f"digits: {n} training rows, {len(x_test)} test rows, batch {b}\n")
    print(f"{'KL weighting':<12} {'accuracy':>9} {'test NLL':>9} {'ECE':>7}")
    for way, acc, nll, ece in rows:
        print(f"{way:<12} {acc:9.3f} {nll:9.3f} {ece:7.3f}")

    h = results["1/N"].history
    last = slice(-100, None)
    ce_per_row = -h["loglik"][last].mean() / n
    kl = h["kl_global"][last].mean()
    coef = kq.explain(model, total_size=n, batch_size=b, scale_cost_to_minibatch=True).coefficients
    print("\nKL vs cross-entropy (the '1/N' fit, mean of the last 100 steps):")
    print(f"  KL(q || prior) of all weights      {kl:12.1f} nats   (the 'KL ~ 1000')")
    print(f"  cross-entropy per training row     {ce_per_row:12.4f} nats   (the 'CE ~ 1')")
    print(f"  cross-entropy of all {n} rows     {ce_per_row * n:12.1f} nats")
    print(f"  in the loss: factor on KL = s*beta = {coef['kl_global']:.5f}, on the batch's CE sum "
          f"= s*T*N/b = {coef['loglik']:.1f}")
    print(f"  so per step the loss holds KL*{coef['kl_global']:.5f} = {kl * coef['kl_global']:.2f} "
          f"against CE*{b} rows = {ce_per_row * b:.2f}: the same ratio as the full-data ELBO")
    if args.plot:
        _plot(results, n, args.plot)
    return rows, results


def _plot(results, n, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    smooth = np.ones(50) / 50  # a running mean: one minibatch's estimate is noisy
    for way, r in results.items():
        line, = ax.plot(np.convolve(r.history["kl_global"], smooth, "valid"), label=f"KL, {way}")
        ax.plot(np.convolve(-r.history["loglik"], smooth, "valid"), color=line.get_color(),
                ls="--", label=f"cross-entropy of all N rows, {way}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("nats (running mean of 50 steps)")
    ax.legend(fontsize="small")
    ax.set_title(f"Bayes by Backprop on digits (N={n})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
