"""Does the local step help an amortized local? The digits VAE, semi-amortized.

    .venv/bin/python bench/semi_amortized.py            # ~4 min on 2 CPU cores
    .venv/bin/python bench/semi_amortized.py --quick    # smoke run

examples/vae.py's model (continuous Bernoulli, 4 latent numbers per image, beta = 1) is
trained two ways with the same steps, batches and Adam schedule, on 1437 digits:

- amortized (what kq.fit does): encoder and decoder descend the loss with q(z_i) given
  by the encoder;
- semi-amortized (Kim et al. 2018's idea, with klqp's local step in place of their
  gradient steps): each batch's q(z_i) from the encoder is refined by ``--refine``
  guarded Newton iterations of ``klqp.steps`` (8-node cubature over the 4 numbers, the
  decoder held fixed); the decoder descends the loss at the refined q, the encoder its
  own loss (the decoder held fixed there), so it keeps learning to predict q.

Both are then scored on the 360 held-out digits by the ELBO per image (64 draws, the
same for every score): with the encoder's q, and with the encoder's q refined by the
local step (the "amortization gap" is the difference). NumPyro backend, float64.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import klqp as kq  # noqa: E402
from cases import _load_example  # noqa: E402
from klqp import steps as rule  # noqa: E402
from klqp.problem import init_params, make_problem  # noqa: E402
from klqp_numpyro.lowering import build_row_densities, q_location  # noqa: E402
from klqp_numpyro.steps import Stepper  # noqa: E402

WEIGHTS = {"likelihood_weight": 1.0, "beta_local": 1.0, "beta_global": 1.0}


def refiner(problem, iterations: int):
    """The local step of klqp.steps on an amortized local's rows (the decoder fixed)."""
    stepper = Stepper(problem, None, None)
    k = problem.model["z"].shape[0]
    nodes, weights = rule.quadrature(k, 8)
    stepper.layout = rule.LocalLayout(("z",), ((k,),), (0,), k, nodes, weights)
    stepper.local_step = kq.LocalStep(iterations=max(1, iterations))
    stepper.nodes, stepper.node_weights = jnp.asarray(nodes), jnp.asarray(weights)

    def refine(point, loc, scale, columns):
        loc, log_scale, _ = stepper.newton(loc, jnp.log(scale), {}, columns, point, WEIGHTS,
                                           iterations)
        return loc, jnp.exp(log_scale)

    return refine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--refine", type=int, default=2, help="Newton iterations per batch")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = 200, 1

    vae = _load_example("vae")
    pixels = load_digits().data / 16.0
    train, test = pixels[:1437], pixels[1437:]
    model = vae.build_model("continuous_bernoulli")
    problem = make_problem(model, {"image": train}, batch_size=128, beta_local=1.0,
                           scale_cost_to_minibatch=True)
    n, b = problem.total_size, problem.batch_size
    densities = build_row_densities(problem)
    refine = refiner(problem, args.refine)
    schedule = optax.linear_schedule(3e-3, 3e-4, args.steps)
    decoder = lambda name: not name.startswith("enc")

    def elbo_rows(point, loc, scale, columns, eps):
        """ELBO of each row's q = N(loc, scale^2), averaged over the draws eps (S, R, K)."""
        def one(e):
            u = loc + scale * e
            d = densities({"z": u}, columns, point)
            lq = jax.scipy.stats.norm.logpdf(u, loc, scale).sum(-1)
            return d.loglik_rows + d.local_logp_rows - lq
        return jax.vmap(one)(eps).mean(0)

    def loss(params, columns, eps, semi: bool):
        point = {k: p["value"] for k, p in params.items()}
        loc, scale = q_location(problem, params, columns)["z"]
        if not semi:
            return -jnp.mean(elbo_rows(point, loc, scale, columns, eps[None]))
        frozen = jax.lax.stop_gradient(point)
        r_loc, r_scale = jax.lax.stop_gradient(refine(frozen, loc, scale, columns))
        held = {k: (jax.lax.stop_gradient(v) if decoder(k) else v) for k, v in point.items()}
        return (-jnp.mean(elbo_rows(point, r_loc, r_scale, columns, eps[None]))      # decoder
                - jnp.mean(elbo_rows(held, loc, scale, columns, eps[None])))         # encoder

    def train_run(seed: int, semi: bool):
        params = {k: {"value": jnp.asarray(v["value"])}
                  for k, v in init_params(problem, seed).items()}
        opt = optax.adam(schedule)
        state = opt.init(params)

        @jax.jit
        def step(params, state, idx, key):
            columns = {"image": jnp.asarray(train)[idx]}
            eps = jax.random.normal(key, (b, 4))
            value, grads = jax.value_and_grad(loss)(params, columns, eps, semi)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        key = jax.random.PRNGKey(seed)
        start = time.perf_counter()
        for t in range(args.steps):
            epoch, pos = divmod(t, n // b)
            idx = np.random.default_rng([seed, epoch]).permutation(n)[pos * b:(pos + 1) * b]
            params, state, value = step(params, state, jnp.asarray(idx), jax.random.fold_in(key, t))
        value.block_until_ready()
        return params, time.perf_counter() - start

    @jax.jit
    def scores(params, eps):
        point = {k: p["value"] for k, p in params.items()}
        columns = {"image": jnp.asarray(test)}
        loc, scale = q_location(problem, params, columns)["z"]
        plain = elbo_rows(point, loc, scale, columns, eps).mean()
        r_loc, r_scale = refiner(problem, 10)(point, loc, scale, columns)
        return plain, elbo_rows(point, r_loc, r_scale, columns, eps).mean()

    eps = jax.random.normal(jax.random.PRNGKey(123), (64, len(test), 4))
    print(f"digits VAE (continuous Bernoulli, 4 latent numbers), {args.steps} steps of {b} "
          f"images, {len(test)} held-out images; ELBO in nats per image (higher is better)")
    print(f"{'training':<32} {'seed':>4} {'seconds':>8} {'ELBO, encoder q':>16} "
          f"{'ELBO, refined q':>16} {'gap':>6}")
    for semi in (False, True):
        label = (f"semi-amortized ({args.refine} Newton)" if semi else "amortized (kq.fit's)")
        for seed in range(args.seeds):
            params, seconds = train_run(seed, semi)
            plain, refined = (float(x) for x in scores(params, eps))
            print(f"{label:<32} {seed:>4} {seconds:8.1f} {plain:16.2f} {refined:16.2f} "
                  f"{refined - plain:6.2f}", flush=True)


if __name__ == "__main__":
    main()
