"""Varying intercepts and slopes (examples/varying_slopes.py's data and priors) against
NUTS: q's hyperparameter means in NUTS sds, centred (the example's model) and non-centred.

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

import klqp as kq  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("varying_slopes",
                                                  ROOT / "examples" / "varying_slopes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpyro")
    parser.add_argument("--steps", type=int, nargs="+", default=[3000, 12000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    example = _example()
    data = example.make_data(seed=0)
    draws = example.nuts_reference(data)
    print(f"{len(data['y']):,} houses, {example.COUNTIES} counties; "
          "|q mean - NUTS mean| / NUTS sd (q sd / NUTS sd)")
    print(f"  {'model':<12} {'batch':>5} {'steps':>6} {'seed':>4} "
          + " ".join(f"{h:>15}" for h in example.HYPER))
    runs = [("centred", 200, steps, seed) for steps in args.steps for seed in args.seeds]
    runs += [("centred", len(data["y"]), args.steps[0], 0)]          # full batch
    runs += [("non-centred", 200, steps, 0) for steps in args.steps]
    out = {}
    for name, batch, steps, seed in runs:
        model = example.build_model(centred=name == "centred")
        r = kq.fit(model, data, backend=args.backend, steps=steps, batch_size=batch, seed=seed,
                   progress=False)
        row = example.compare(r, draws)
        out[(name, batch, steps, seed)] = row
        print(f"  {name:<12} {batch:>5} {steps:>6} {seed:>4} "
              + " ".join(f"{z:8.2f} ({s:4.2f})" for z, s in row.values()), flush=True)
    return out

if __name__ == "__main__":
    main()
