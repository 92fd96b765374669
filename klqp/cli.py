"""The ``klqp`` command.

    klqp backends                                  what is installed
    klqp run examples/vae.py --backend pymc ...    run an example (its own flags follow)
    klqp explain examples/vae.py --batch-size 128  the objective of the model a file defines
    klqp explain spec.json --batch-size 128        ... or of a spec saved by model.to_json()

A Python file ``explain`` can read defines ``build_model()`` (returning a kq.Model) and,
unless ``--total-size`` is given or the model has one, ``TOTAL_SIZE``. A ``.json`` file is
loaded with ``kq.Model.from_json`` (no code in it runs); N is ``--total-size`` or the
spec's ``total_size``.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import runpy
import sys
from typing import Optional

from . import backends
from .explain import explain
from .model import Model, ModelError


def example_parser(doc: str, *, steps: int, batch_size: Optional[int] = None,
                   rows: Optional[int] = None, noise: Optional[float] = None
                   ) -> argparse.ArgumentParser:
    """The flags every example takes: --backend, --steps, --seed, --local-step,
    --global-step, and --batch-size / --rows / --noise where the example has them."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--backend", default="numpyro", choices=backends.available())
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    if batch_size is not None:
        parser.add_argument("--batch-size", type=int, default=batch_size)
    if rows is not None:
        parser.add_argument("--rows", type=int, default=rows, help="data rows to make (N)")
    if noise is not None:
        parser.add_argument("--noise", type=float, default=noise,
                            help="sd of the observation noise the data are made with")
    parser.add_argument("--local-step", choices=("auto", "none"), default="auto",
                        help="kq.fit's local_step: 'auto' (the local step) or 'none' (row-wise "
                             "Adam steps, klqp 0.1's rule)")
    parser.add_argument("--global-step", choices=("auto", "none"), default="auto",
                        help="kq.fit's global_step: 'auto' (natural-gradient steps, averaging) or "
                             "'none' (Adam on every global)")
    return parser


def step_rule(args) -> dict:
    """``local_step=`` and ``global_step=`` for kq.fit from an example's flags."""
    return {"local_step": None if args.local_step == "none" else "auto",
            "global_step": None if args.global_step == "none" else "auto"}


def _load(path: str):
    file = pathlib.Path(path)
    if not file.is_file():
        raise SystemExit(f"klqp: no such file: {path}")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cmd_backends(args) -> int:
    names = backends.available()
    if not names:
        print("no backends installed; pip install -e backends/numpyro (or backends/pymc)")
        return 1
    for name in names:
        try:
            backends.get(name)
            status = "ok"
        except Exception as err:  # report a broken plug-in instead of crashing the listing
            status = f"fails to load: {err}"
        print(f"{name:<10} {status}")
    return 0


def _cmd_run(args, rest) -> int:
    sys.argv = [args.file] + rest
    runpy.run_path(args.file, run_name="__main__")
    return 0


def _load_spec(path: str):
    """The model a JSON spec file (``model.to_json()``'s text) holds."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise SystemExit(f"klqp: no such file: {path}")
    try:
        return Model.from_json(file.read_text(encoding="utf-8"))
    except (ModelError, UnicodeDecodeError) as err:
        raise SystemExit(f"klqp: {path}: {err}") from None


def _cmd_explain(args) -> int:
    if args.file.lower().endswith(".json"):
        model = _load_spec(args.file)
        total = args.total_size or model.total_size
        if total is None:
            raise SystemExit(f"klqp: give --total-size N ({args.file} sets no total_size)")
    else:
        module = _load(args.file)
        if not hasattr(module, "build_model"):
            raise SystemExit(f"klqp: {args.file} defines no build_model(); klqp explain needs one")
        model = module.build_model()
        total = args.total_size or model.total_size or getattr(module, "TOTAL_SIZE", None)
        if total is None:
            raise SystemExit("klqp: give --total-size N (the file sets no TOTAL_SIZE)")
    print(explain(model, total_size=total, batch_size=args.batch_size, beta=args.beta,
                  beta_global=args.beta_global, beta_local=args.beta_local,
                  likelihood_weight=args.likelihood_weight,
                  scale_cost_to_minibatch=args.scale_cost_to_minibatch))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="klqp", description="klqp: one mini-batch VI objective")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="list the installed backends")
    run = sub.add_parser("run", help="run an example file; flags after the file go to it")
    run.add_argument("file")
    ex = sub.add_parser("explain", help="print the objective of the model a file defines")
    ex.add_argument("file", help="a .py file defining build_model(), or a .json spec saved "
                                 "by model.to_json()")
    ex.add_argument("--total-size", type=int)
    ex.add_argument("--batch-size", type=int)
    ex.add_argument("--beta", type=float)
    ex.add_argument("--beta-global", type=float)
    ex.add_argument("--beta-local", type=float)
    ex.add_argument("--likelihood-weight", type=float, default=1.0)
    ex.add_argument("--scale-cost-to-minibatch", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.command != "run" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "backends":
        return _cmd_backends(args)
    if args.command == "run":
        return _cmd_run(args, rest)
    return _cmd_explain(args)


if __name__ == "__main__":
    sys.exit(main())
