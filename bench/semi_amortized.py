"""Does the local step help an amortized local? The digits VAE's amortization gap.

    .venv/bin/python bench/semi_amortized.py            # ~1 min on 2 CPU cores
    .venv/bin/python bench/semi_amortized.py --quick    # smoke run

examples/vae.py's model (continuous Bernoulli, 4 latent numbers per image, beta = 1) is
fitted by ``kq.fit`` (amortized: the encoder gives each image's q(z_i)) on 1437 digits,
3,000 steps of 128 images, Adam 3e-3 -> 3e-4. Each fit is scored on the 360 held-out
digits by their log predictive density per image (``result.elpd``, 64 importance draws
a row, the same seed for every score) twice: with the encoder's q(z_i) as the proposal
(``locals="encoder"``), and with that q refined by the local step on each held-out row
(``locals="fit"``: ``kq.fit_locals``, the guarded Newton step training uses). The
difference is the amortization gap that refining at test time closes.

Semi-amortized TRAINING (refining each batch's q while the decoder learns, Kim et al.
2018) was measured by an earlier version of this script, which reached into the NumPyro
plug-in's internals; its figures and the commit that has it are in bench/README.md.
Everything here goes through the public API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from sklearn.datasets import load_digits  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import klqp as kq  # noqa: E402
from cases import _load_example  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--draws", type=int, default=64, help="importance draws per image")
    parser.add_argument("--backend", default="numpyro", choices=kq.backends.available())
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.draws = 200, 1, 8

    vae = _load_example("vae")
    pixels = load_digits().data / 16.0
    train, test = {"image": pixels[:1437]}, {"image": pixels[1437:]}
    model = vae.build_model("continuous_bernoulli")
    print(f"digits VAE (continuous Bernoulli, 4 latent numbers), kq.fit on {args.backend}, "
          f"{args.steps} steps of 128 images; log predictive density of {len(test['image'])} "
          "held-out images, nats per image (higher is better)")
    print(f"{'seed':>4} {'fit s':>6} {'encoder q':>10} {'refined q':>10} {'gap':>6} "
          f"{'refine s':>9}")
    for seed in range(args.seeds):
        start = time.perf_counter()
        result = kq.fit(model, train, backend=args.backend, steps=args.steps, batch_size=128,
                        beta_local=1.0, scale_cost_to_minibatch=True, seed=seed,
                        learning_rate=kq.schedules.linear(3e-3, 3e-4, args.steps))
        fitted = time.perf_counter() - start
        encoder = result.elpd(test, num_samples=args.draws, seed=123, locals="encoder")
        start = time.perf_counter()
        refined = result.elpd(test, num_samples=args.draws, seed=123, locals="fit")
        refine_seconds = time.perf_counter() - start
        n = len(test["image"])
        print(f"{seed:>4} {fitted:6.1f} {encoder.elpd / n:10.2f} {refined.elpd / n:10.2f} "
              f"{(refined.elpd - encoder.elpd) / n:6.2f} {refine_seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
