"""Varying intercepts and slopes by group: checked against NUTS, held-out rows, a new group.

Simulated data in the shape of the radon example (Gelman & Hill 2007): log radon y of
houses in G counties, x = 1 for a house measured on its first floor, 0 in its basement.
Each county has its own intercept and slope, partially pooled towards the state's:

    mu_a, mu_b ~ Normal(0, 5)          sigma_a, sigma_b ~ HalfNormal(1)
    a_g ~ Normal(mu_a, sigma_a)        b_g ~ Normal(mu_b, sigma_b)
    sigma ~ HalfNormal(1)
    y_i ~ Normal(a_{g_i} + b_{g_i} x_i, sigma)

Centred, because most houses are in counties with tens to hundreds of them: there the
data pin each a_g, and a mean-field q of the centred model is near the posterior. The
non-centred form (a_g = mu_a + sigma_a a_raw_g), which helps NUTS on sparse groups, puts
the posterior's coupling of sigma_a with every a_raw_g into the numbers a mean-field q
cannot correlate: measured in bench/varying_slopes_nuts.py, its group scales end ~1
NUTS sd low where the centred ones are within ~0.2 (``build_model(centred=False)``).

It fits 90 % of the houses, then:

- checks q's hyperparameters against NUTS on the same houses (NumPyro, 500 warm-up and
  1,000 draws of the same model; ``--reference none`` skips it);
- ``result.elpd(test)``: the held-out houses' expected log predictive density, against
  a model with one intercept and slope for the whole state (complete pooling);
- ``result.predict(rows, new_groups=True)``: a county the fit never saw; its a_g and
  b_g are drawn from N(mu_a, sigma_a) and N(mu_b, sigma_b) at each draw of q;
- ``kq.Deterministic("mu", ...)``: the expected log radon of each house, kept by name.

    python examples/varying_slopes.py --backend pymc
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_ENABLE_X64", "1")  # NUTS in float64; before jax is imported

import numpy as np  # noqa: E402

import klqp as kq  # noqa: E402
from klqp.cli import example_parser, step_rule  # noqa: E402

COUNTIES = 40
TOTAL_SIZE = 2000  # houses the example makes by default; `klqp explain` reads it
HYPER = ("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma")


def make_data(n: int = TOTAL_SIZE, groups: int = COUNTIES, seed: int = 0):
    """Counties of very different sizes (a few houses to a few hundred), as in radon."""
    rng = np.random.default_rng(seed)
    county = rng.choice(groups, size=n, p=rng.dirichlet(np.full(groups, 0.7)))
    a = 1.5 + 0.4 * rng.normal(size=groups)
    b = -0.6 + 0.3 * rng.normal(size=groups)
    floor = (rng.uniform(size=n) < 0.2).astype(float)
    y = a[county] + b[county] * floor + 0.7 * rng.normal(size=n)
    return {"county": county, "floor": floor, "y": y}


def build_model(groups: int = COUNTIES, pooled: bool = False, centred: bool = True) -> kq.Model:
    with kq.Model("complete_pooling" if pooled else "varying_slopes") as model:
        county = None if pooled else kq.Data("county", dtype="int")
        floor = kq.Data("floor")
        mu_a = kq.Global("mu_a", kq.Normal(0.0, 5.0))
        mu_b = kq.Global("mu_b", kq.Normal(0.0, 5.0))
        if pooled:
            mu = kq.Deterministic("mu", mu_a + mu_b * floor)
        else:
            sigma_a = kq.Global("sigma_a", kq.HalfNormal(1.0))
            sigma_b = kq.Global("sigma_b", kq.HalfNormal(1.0))
            if centred:
                a = kq.Global("a", kq.Normal(mu_a, sigma_a), shape=(groups,))
                b = kq.Global("b", kq.Normal(mu_b, sigma_b), shape=(groups,))
                mu = kq.Deterministic("mu", a[county] + b[county] * floor)
            else:
                a_raw = kq.Global("a_raw", kq.Normal(0.0, 1.0), shape=(groups,))
                b_raw = kq.Global("b_raw", kq.Normal(0.0, 1.0), shape=(groups,))
                mu = kq.Deterministic("mu", mu_a + sigma_a * a_raw[county]
                                      + (mu_b + sigma_b * b_raw[county]) * floor)
        sigma = kq.Global("sigma", kq.HalfNormal(1.0))
        kq.Observed("y", kq.Normal(mu, sigma))
    return model


_NUTS_DRAWS: dict = {}  # one NUTS run per data set in a process (the tests compare both
                       # backends' fits with the same draws)


def nuts_reference(data: dict, groups: int = COUNTIES, seed: int = 0) -> dict:
    """NUTS draws {hyperparameter: (1000,)} of the same model in NumPyro, non-centred
    (the same posterior; NUTS samples it without divergences on the sparse counties)."""
    key = (groups, seed, tuple((k, np.asarray(v).tobytes()) for k, v in sorted(data.items())))
    if key in _NUTS_DRAWS:
        return _NUTS_DRAWS[key]
    import jax
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
    mcmc.run(jax.random.PRNGKey(seed), **{k: np.asarray(v) for k, v in data.items()})
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples().items() if k in HYPER}
    _NUTS_DRAWS[key] = draws
    return draws


def compare(result, draws: dict) -> dict:
    """{hyperparameter: (|q mean - NUTS mean| / NUTS sd, q sd / NUTS sd)}."""
    return {h: (float(abs(result.mean(h) - draws[h].mean()) / draws[h].std()),
                float(result.std(h) / draws[h].std())) for h in HYPER}


def main(argv=None):
    parser = example_parser(__doc__, steps=3000, batch_size=200, rows=TOTAL_SIZE)
    parser.add_argument("--reference", choices=("nuts", "none"), default="nuts",
                        help="check q's hyperparameters against NUTS (NumPyro) on the same houses")
    args = parser.parse_args(argv)

    data = make_data(args.rows, seed=args.seed)
    order = np.random.default_rng(args.seed + 1).permutation(args.rows)
    held = order[: args.rows // 10]
    train = {k: v[order[args.rows // 10:]] for k, v in data.items()}
    test = {k: v[held] for k, v in data.items()}

    fits, tests = {}, {}
    for pooled in (False, True):
        model = build_model(pooled=pooled)
        columns = [v.name for v in model.data_vars + model.observed]  # pooled: no county
        tests[model.name] = {k: test[k] for k in columns}
        fits[model.name] = kq.fit(model, {k: train[k] for k in columns}, backend=args.backend,
                                  steps=args.steps, batch_size=args.batch_size,
                                  seed=args.seed, **step_rule(args))
    r = fits["varying_slopes"]
    print(r.summary())
    reference = None
    if args.reference == "nuts":
        nuts_draws = nuts_reference(train)
        reference = compare(r, nuts_draws)
        print("\nq against NUTS on the same houses (NumPyro, 500 warm-up, 1,000 draws):")
        print(f"  {'':<8} {'q mean':>8} {'q sd':>7} {'NUTS mean':>10} {'NUTS sd':>8} "
              f"{'|diff|/NUTS sd':>15} {'q sd/NUTS sd':>13}")
        for h, (z, ratio) in reference.items():
            print(f"  {h:<8} {float(r.mean(h)):8.3f} {float(r.std(h)):7.3f} "
                  f"{nuts_draws[h].mean():10.3f} {nuts_draws[h].std():8.3f} {z:15.2f} {ratio:13.2f}")
        print("  (mean-field q: its sds of mu_b and sigma_b are smaller than NUTS's, where the "
              "posterior couples them with the counties' slopes)")
    else:
        for name in HYPER:
            print(f"{name:<8} q mean {float(r.mean(name)):7.3f} +- {float(r.std(name)):.3f}")

    print(f"\nheld-out houses ({len(held)}), expected log predictive density "
          "(sum; Monte-Carlo error; s.e. over houses):")
    scores = {name: fit.elpd(tests[name], num_samples=1000, seed=args.seed)
              for name, fit in fits.items()}
    for name, e in scores.items():
        print(f"  {name:<18} elpd {e.elpd:9.2f}  mc_se {e.mc_se:5.2f}  se {e.se:6.2f}  "
              f"({e.per_row_mean:.3f} nats per house)")
    diff = scores["varying_slopes"].per_row - scores["complete_pooling"].per_row
    print(f"  varying - pooled: {diff.sum():.2f} +- {np.sqrt(len(diff)) * diff.std(ddof=1):.2f}"
          " (s.e. of the paired difference)")

    # a county the fit never saw (index COUNTIES), a basement and a first-floor house,
    # beside the largest county the fit did see
    seen = int(np.bincount(train["county"]).argmax())
    rows = {"county": np.array([COUNTIES, COUNTIES, seen, seen]),
            "floor": np.array([0.0, 1.0, 0.0, 1.0])}
    draws = r.predict(rows, num_samples=4000, seed=args.seed, new_groups=True)
    print("\n90 % intervals: mu (a house's expected log radon) and y (a new measurement)")
    for i, label in enumerate(["new county, basement", "new county, first floor",
                               f"county {seen}, basement", f"county {seen}, first floor"]):
        mu_lo, mu_hi = np.percentile(draws["mu"][:, i], [5, 95])
        y_lo, y_hi = np.percentile(draws["y"][:, i], [5, 95])
        print(f"  {label:<26} mu [{mu_lo:6.3f}, {mu_hi:6.3f}]   y [{y_lo:6.3f}, {y_hi:6.3f}]")
    print("A new county is uncertain about its own intercept and slope (drawn from the "
          "fitted county distribution); a large county knows its own.")
    return {"fits": fits, "scores": scores, "draws": draws, "rows": rows,
            "reference": reference}


if __name__ == "__main__":
    main()
