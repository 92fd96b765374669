"""Varying intercepts and slopes (examples/varying_slopes.py's data and priors) against
NUTS: q's hyperparameter means in NUTS sds, non-centred (the example's model) and centred.

Mean-field q on a hierarchical model is biased where the posterior couples the group
scales with the group effects; this measures by how much on the example's data (2,000
houses, 40 counties), and how the parametrization moves it.

    .venv/bin/python bench/varying_slopes_nuts.py [--backend pymc] [--steps 3000 12000]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib

os.environ.setdefault("JAX_ENABLE_X64", "1")  # NUTS in float64, as the other benchmarks

import numpy as np  # noqa: E402

import klqp as kq  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
HYPER = ("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma")


def _example():
    spec = importlib.util.spec_from_file_location("varying_slopes",
                                                  ROOT / "examples" / "varying_slopes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def centred(groups: int) -> kq.Model:
    """The same model with a_g ~ Normal(mu_a, sigma_a), b_g ~ Normal(mu_b, sigma_b)."""
    with kq.Model("centred") as model:
        county = kq.Data("county", dtype="int")
        floor = kq.Data("floor")
        mu_a = kq.Global("mu_a", kq.Normal(0.0, 5.0))
        mu_b = kq.Global("mu_b", kq.Normal(0.0, 5.0))
        sigma_a = kq.Global("sigma_a", kq.HalfNormal(1.0))
        sigma_b = kq.Global("sigma_b", kq.HalfNormal(1.0))
        a = kq.Global("a", kq.Normal(mu_a, sigma_a), shape=(groups,))
        b = kq.Global("b", kq.Normal(mu_b, sigma_b), shape=(groups,))
        sigma = kq.Global("sigma", kq.HalfNormal(1.0))
        kq.Observed("y", kq.Normal(a[county] + b[county] * floor, sigma))
    return model


def nuts(data: dict, groups: int, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    def model(county, floor, y):
        mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 5.0))
        mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 5.0))
        sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
        sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(1.0))
        a_raw = numpyro.sample("a_raw", dist.Normal(0.0, 1.0).expand([groups]))
        b_raw = numpyro.sample("b_raw", dist.Normal(0.0, 1.0).expand([groups]))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        mu = mu_a + sigma_a * a_raw[county] + (mu_b + sigma_b * b_raw[county]) * floor
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    mcmc = MCMC(NUTS(model), num_warmup=500, num_samples=1000, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), **{k: jnp.asarray(v) for k, v in data.items()})
    return {k: np.asarray(v) for k, v in mcmc.get_samples().items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpyro")
    parser.add_argument("--steps", type=int, nargs="+", default=[3000, 12000])
    args = parser.parse_args(argv)
    example = _example()
    groups = example.COUNTIES
    data = example.make_data(seed=0)
    draws = nuts(data, groups)
    print(f"{len(data['y']):,} houses, {groups} counties, batches of 200; "
          "|q mean - NUTS mean| / NUTS sd (q sd / NUTS sd)")
    print(f"  {'model':<12} {'steps':>6} " + " ".join(f"{h:>15}" for h in HYPER))
    out = {}
    for name, model in (("non-centred", example.build_model()), ("centred", centred(groups))):
        for steps in args.steps:
            r = kq.fit(model, data, backend=args.backend, steps=steps, batch_size=200, seed=0,
                       progress=False)
            row = {h: (float(abs(r.mean(h) - draws[h].mean()) / draws[h].std()),
                       float(r.std(h) / draws[h].std())) for h in HYPER}
            out[(name, steps)] = row
            print(f"  {name:<12} {steps:>6} " + " ".join(f"{z:8.2f} ({s:4.2f})"
                                                          for z, s in row.values()))
    return out


if __name__ == "__main__":
    main()
