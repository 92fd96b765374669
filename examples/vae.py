"""A VAE on scikit-learn's 8x8 digits: how to weight its KL, and which likelihood.

The code z_i (4 numbers per image) is an amortized Local: an MLP encoder of the image
gives q(z_i)'s mean and scale, a decoder MLP of point parameters (kq.Param) gives the
likelihood. klqp's objective puts N/b on the reconstruction term and on the local KL,
and beta_local on the KL only, so:

- beta-VAE: beta_local = beta (Higgins et al. 2017). A paper's beta_norm = beta M/N (M
  latent, N input dimensions) converts with schedules.beta_from_norm.
- KL warm-up: beta_local rising linearly (Bowman et al. 2015; Sonderby et al. 2016), or
  along a sigmoid; cyclical annealing (Fu et al. 2019).
- Likelihoods: Gaussian with a learnable precision, Bernoulli (on binarized pixels: it
  is not a density on [0, 1]), and the continuous Bernoulli (Loaiza-Ganem & Cunningham
  2019), a proper density on [0, 1].

It prints reconstruction vs KL per image for each setting, the held-out images' log
predictive density (``result.elpd``: each code integrated out with its encoder's q as
the importance proposal, then with that q refined by the local step, as semi-amortized
VI does), and saves reconstructions.

    python examples/vae.py --backend pymc --steps 3000 --images vae.png
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.datasets import load_digits

import klqp as kq
from klqp.cli import example_parser, step_rule
from klqp import schedules

LATENT, HIDDEN, PIXELS = 4, 64, 64
TOTAL_SIZE = 1617  # the digits data set less 180 held-out images; `klqp explain` reads it
HELD_OUT = 180


def build_model(likelihood: str = "continuous_bernoulli") -> kq.Model:
    with kq.Model(f"vae_{likelihood}") as model:
        encoder = kq.nn.MLP("enc", [PIXELS, HIDDEN, 2 * LATENT], activation="relu")
        z = kq.Local("z", kq.Normal(0.0, 1.0), shape=(LATENT,),
                     encoder=kq.nn.amortize(encoder, "image"))
        logits = kq.nn.MLP("dec", [LATENT, HIDDEN, PIXELS], activation="relu")(z)
        if likelihood == "gaussian":
            log_precision = kq.Param("log_precision", (), init=2.0)
            kq.Observed("image", kq.Normal(kq.sigmoid(logits), kq.exp(-0.5 * log_precision)))
        elif likelihood == "bernoulli":
            kq.Observed("image", kq.Bernoulli(logits=logits))
        else:
            kq.Observed("image", kq.ContinuousBernoulli(logits=logits))
    return model


def decoded_mean(result, images):
    """The likelihood's mean image for each input, with z at its encoder's mean."""
    params = result.model["image"].dist.param_dict
    if "mu" in params:  # Gaussian: the mean is sigmoid(logits) already
        return result.evaluate(params["mu"], {"image": images})
    lam = expit(result.evaluate(params["logits"], {"image": images}))
    if result.model["image"].dist.family == "Bernoulli":
        return lam
    # continuous Bernoulli mean: lam/(2 lam - 1) + 1/(2 atanh(1 - 2 lam)); 1/2 at lam = 1/2
    near = np.abs(lam - 0.5) < 1e-3
    safe = np.clip(np.where(near, 0.25, lam), 1e-12, 1 - 1e-12)
    return np.where(near, 0.5, safe / (2 * safe - 1) + 1 / (2 * np.arctanh(1 - 2 * safe)))


def main(argv=None):
    parser = example_parser(__doc__, steps=3000, batch_size=128)
    parser.add_argument("--images", default=None, help="save reconstructions to this PNG")
    args = parser.parse_args(argv)

    every = load_digits().data / 16.0
    order = np.random.default_rng(0).permutation(len(every))
    pixels, held_out = every[order[HELD_OUT:]], every[order[:HELD_OUT]]
    binary = (pixels > 0.5).astype(float)
    n, steps = len(pixels), args.steps
    settings = [  # (label, likelihood, weights)
        ("Gaussian, beta=1", "gaussian", dict(beta_local=1.0)),
        ("Bernoulli, beta=1", "bernoulli", dict(beta_local=1.0)),
        ("cont. Bernoulli, beta=1", "continuous_bernoulli", dict(beta_local=1.0)),
        ("cont. Bernoulli, beta=4", "continuous_bernoulli", dict(beta_local=4.0)),
        ("cont. Bernoulli, beta_norm=1", "continuous_bernoulli",
         dict(beta_local=schedules.beta_from_norm(1.0, LATENT, PIXELS))),
        ("cont. Bernoulli, linear warm-up", "continuous_bernoulli",
         dict(beta_local=schedules.linear_warmup(steps // 2))),
        ("cont. Bernoulli, sigmoid warm-up", "continuous_bernoulli",
         dict(beta_local=schedules.sigmoid(steps // 4, 10.0 / steps))),
        ("cont. Bernoulli, cyclical", "continuous_bernoulli",
         dict(beta_local=schedules.cyclical(steps, cycles=4, ratio=0.5))),
    ]
    print(f"{'setting':<34} {'beta at end':>11} {'recon':>9} {'KL':>7} {'ELBO':>9}   (nats per image)")
    results = {}
    for label, likelihood, weights in settings:
        data = {"image": binary if likelihood == "bernoulli" else pixels}
        r = kq.fit(build_model(likelihood), data, backend=args.backend, steps=steps,
                   batch_size=args.batch_size, scale_cost_to_minibatch=True, seed=args.seed,
                   learning_rate=schedules.linear(3e-3, 3e-4, steps), **weights,
                   **step_rule(args))
        results[label] = r
        last = slice(-max(1, steps // 20), None)
        recon = -r.history["loglik"][last].mean() / n
        kl = r.history["kl_local"][last].mean() / n
        print(f"{label:<34} {r.history['beta_local'][-1]:11.3f} {recon:9.2f} {kl:7.2f} "
              f"{-recon - kl:9.2f}")
    print("\nrecon = -E log p(image | z); KL = KL(q(z|image) || p(z)). Likelihoods differ in "
          "kind (Gaussian and continuous Bernoulli are densities on [0, 1], Bernoulli a "
          "probability of binarized pixels), so compare ELBOs within a likelihood only.")
    print(f"\nheld-out images ({HELD_OUT}): log p(image | training images), nats per image "
          "(Monte-Carlo s.e. of the mean)")
    for label in ("Gaussian, beta=1", "cont. Bernoulli, beta=1"):
        r = results[label]
        scores = {way: r.elpd({"image": held_out}, num_samples=200, seed=args.seed, locals=way)
                  for way in ("encoder", "fit")}
        print(f"{label:<34} encoder's q {scores['encoder'].per_row_mean:8.2f} "
              f"(+-{scores['encoder'].mc_se / HELD_OUT:.2f})   refined "
              f"{scores['fit'].per_row_mean:8.2f} (+-{scores['fit'].mc_se / HELD_OUT:.2f})")
    print("A refined q(z | image) is a better importance proposal and a better code: the "
          "amortization gap (Cremer et al. 2018), closed by the local step on new images.")
    if args.images:
        _save_images(results, pixels, binary, args.images)
    return results


def _save_images(results, pixels, binary, path, count=8):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, axes = plt.subplots(len(labels) + 1, count, figsize=(count * 0.9, (len(labels) + 1) * 1.0))
    for j in range(count):
        axes[0, j].imshow(pixels[j].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("input", rotation=0, ha="right", fontsize=7)
    for i, label in enumerate(labels, start=1):
        r = results[label]
        source = binary if r.model["image"].dist.family == "Bernoulli" else pixels
        recon = decoded_mean(r, source[:count])
        for j in range(count):
            axes[i, j].imshow(recon[j].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("digits and their VAE reconstructions (decoder mean at the encoder's mean)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
