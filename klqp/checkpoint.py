"""Checkpoints on disk: a fit's whole state as plain data, written atomically.

``kq.fit(..., checkpoint="run.klqp", checkpoint_every=1000)`` writes, every
``checkpoint_every`` steps (at the next boundary of a compiled chunk), when the fit
ends, when Ctrl-C stops it and when a ``kq.NonFiniteError`` stops it:

- the fit's state by name (q's raw iterates, Adam's moments, the step rule's running
  curvature and averages): ``FitState.optimizer``, the arrays a resume continues from,
  matched by name and shape;
- the step, the seed (with the step, the position of every random stream: batches and
  noise depend on (seed, step) only), the step rule, each weight (a ``kq.Shared``'s
  value, a schedule's definition) and the learning rate's schedule;
- the history and q as the fit reports it, so ``kq.load_result`` needs no data;
- the spec (``model.to_dict()``) and a fingerprint of the data (N, b, columns, a
  SHA-256 of in-memory data), so a checkpoint is never resumed with another model, other
  data or another backend.

The file is a NumPy ``.npz`` (a zip of ``.npy`` arrays, read with
``allow_pickle=False``) whose ``meta`` entry is UTF-8 JSON; nothing in it is pickled or
evaluated. It is written to a temporary file in the same folder, synced and renamed over
the old one, so a crash mid-write leaves the previous checkpoint whole.

``kq.fit(model, data, steps=S, resume="run.klqp")`` continues the run to ``S`` steps IN
ALL (rerun the same command after a crash: it finishes the job), bit for bit the run an
unbroken fit would have made on the same backend and machine.

>>> import os, tempfile, numpy as np, klqp as kq
>>> with kq.Model("normal_mean") as model:
...     mu = kq.Global("mu", kq.Normal(0.0, 10.0))
...     kq.Observed("y", kq.Normal(mu, 1.0))
>>> path = os.path.join(tempfile.mkdtemp(), "run.klqp")
>>> data = {"y": np.linspace(0.0, 2.0, 50)}
>>> r = kq.fit(model, data, steps=40, batch_size=10, checkpoint=path, checkpoint_every=20)
>>> kq.load_result(path).steps, read(path).meta["steps_planned"]
(40, 40)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass

import numpy as np

from . import schedules as _schedules
from ._version import __version__ as _klqp_version
from .objective import Shared, Weights

__all__ = ["CheckpointError", "Checkpoint", "Writer", "read", "write", "load_result",
           "resumed_result", "data_fingerprint", "FORMAT", "VERSION"]

FORMAT = "klqp-checkpoint"
VERSION = 2  # 2: the state stored by name (version 1 stored it by position)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not belong to this fit."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds: ``meta`` (the JSON part), the fit's state arrays by
    name, the history and q's reported parameters."""

    path: str
    meta: dict
    optimizer: dict
    history: dict
    params: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])


# -- what describes a fit -----------------------------------------------------------------

def data_fingerprint(problem) -> dict:
    """N, b and the columns' shapes and dtypes; for in-memory data also a SHA-256 of its
    bytes (a few ms per 100k rows), so other data of the same shape is told apart."""
    out = {"total_size": int(problem.total_size), "batch_size": int(problem.batch_size),
           "streamed": problem.data is None}
    if problem.stream is not None and hasattr(problem.stream, "state"):
        out["stream"] = _plain(problem.stream.state())  # a resumable stream (kq.data.parquet)
    if problem.data is not None:
        digest = hashlib.sha256()
        cols = {}
        for name in sorted(problem.data):
            a = np.ascontiguousarray(problem.data[name])
            cols[name] = [list(a.shape), a.dtype.str]
            digest.update(name.encode() + a.dtype.str.encode() + str(a.shape).encode())
            digest.update(a.tobytes())
        out["columns"], out["sha256"] = cols, digest.hexdigest()
    return out


def _weight_dict(weight) -> dict:
    if isinstance(weight, Shared):
        return {"shared": float(weight.value)}
    return _plain(weight.to_dict())


def _plain(value):
    """JSON-safe copy (NumPy scalars and arrays to Python numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_SCHEDULES = {cls.__name__: cls for cls in vars(_schedules).values()
              if isinstance(cls, type) and issubclass(cls, _schedules.Schedule)
              and cls is not _schedules.Schedule}


def _weight_from(d: dict, name: str):
    """A weight rebuilt from its dict: a Shared, or a schedule of klqp.schedules (by an
    explicit table of class names; nothing is evaluated)."""
    if "shared" in d:
        return Shared(float(d["shared"]), name=name)
    fields = dict(d)
    cls = _SCHEDULES.get(fields.pop("schedule", None))
    if cls is None:
        raise CheckpointError(f"weight {name!r}: unknown schedule {d.get('schedule')!r}; known: "
                              f"{sorted(_SCHEDULES)}")
    try:
        return cls(**fields)
    except TypeError as err:
        raise CheckpointError(f"weight {name!r}: bad fields for {cls.__name__}: {err}") from None


def describe_fit(result, *, seed: int, steps_planned: int, learning_rate) -> dict:
    """The JSON part of a checkpoint of ``result``."""
    problem = result.problem
    return {"format": FORMAT, "version": VERSION, "klqp_version": _klqp_version,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "backend": result.backend, "step": int(result.state.step), "seed": int(seed),
            "steps_planned": int(steps_planned), "rule": result.state.rule,
            "interrupted": bool(result.interrupted),
            "dtype": result.info.get("dtype"),
            "spec": _plain(problem.model.to_dict()),
            "data": data_fingerprint(problem),
            # where a resumable stream stands (informative: it follows from the step)
            "stream_position": (_plain(problem.stream.position(int(result.state.step)))
                                if hasattr(problem.stream, "position") else None),
            "scale_cost_to_minibatch": bool(problem.scale_cost_to_minibatch),
            "weights": {name: _weight_dict(w) for name, w in problem.weights.items()},
            "learning_rate": _plain(learning_rate.to_dict()),
            "state_dtypes": {k: np.asarray(a).dtype.str for k, a in result.state.optimizer.items()},
            "history_keys": sorted(result.history),
            "params": {k: sorted(p) for k, p in result.params.items()}}


# -- writing and reading -----------------------------------------------------------------------

def write(path, result, *, seed: int, steps_planned: int, learning_rate) -> None:
    """Write ``result``'s checkpoint to ``path`` atomically (temp file, fsync, rename)."""
    meta = describe_fit(result, seed=seed, steps_planned=steps_planned,
                        learning_rate=learning_rate)
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for name, a in result.state.optimizer.items():
        arrays[f"state/{name}"] = np.asarray(a)
    for k, h in result.history.items():
        arrays[f"history/{k}"] = np.asarray(h, dtype=float)
    for k, p in result.params.items():
        for q, a in p.items():
            arrays[f"params/{k}/{q}"] = np.asarray(a)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path) -> Checkpoint:
    """Read a checkpoint; a missing, corrupt, truncated or foreign file is a
    CheckpointError that says which."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path!r} is not a readable klqp checkpoint (corrupt or "
                              f"truncated: {type(err).__name__}: {err}); resume from an earlier "
                              "copy or start the fit again") from None
    try:
        meta = json.loads(entries.pop("meta").tobytes().decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path!r} has no readable 'meta' entry: not a klqp checkpoint") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a klqp checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") == 1:
        raise CheckpointError(f"{path!r} is a version 1 checkpoint, which stored the fit's state "
                              "by position; this klqp stores and matches it by name (version "
                              f"{VERSION}) and cannot resume or load it: fit again with "
                              "checkpoint= to write a new one")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path!r} is a version {meta.get('version')!r} checkpoint; this "
                              f"klqp reads version {VERSION}")
    optimizer = {k.split("/", 1)[1]: v for k, v in entries.items() if k.startswith("state/")}
    history = {k.split("/", 1)[1]: v for k, v in entries.items() if k.startswith("history/")}
    params: dict = {}
    for k, v in entries.items():
        if k.startswith("params/"):
            _, name, q = k.split("/")
            params.setdefault(name, {})[q] = v
    want = sorted(meta.get("state_dtypes", {}))
    if sorted(optimizer) != want or sorted(history) != meta.get("history_keys") or \
            {k: sorted(p) for k, p in params.items()} != meta.get("params"):
        raise CheckpointError(f"{path!r} is incomplete: its arrays do not match its meta "
                              f"({len(optimizer)} of {len(want)} state arrays)")
    return Checkpoint(path, meta, optimizer, history, params)


# -- resuming ------------------------------------------------------------------------------------

def _differs(what: str, saved, now, fix: str, path: str) -> None:
    if saved != now:
        raise CheckpointError(f"checkpoint {path!r} was written for another {what}: saved "
                              f"{saved!r}, this fit has {now!r}. {fix}")


def resumed_result(ckpt: Checkpoint, problem, *, backend: str, seed: int, rule: dict):
    """The FitResult a backend resumes from, after checking that ``ckpt`` belongs to this
    fit (spec, data, backend, seed, step rule, weights' schedules). A Shared
    weight takes the value it had when the checkpoint was written."""
    from .results import FitResult, FitState

    meta, path = ckpt.meta, ckpt.path
    saved_spec = {**meta["spec"], "variables": [e for e in meta["spec"]["variables"]
                                                if e.get("role") != "deterministic"]}
    _differs("model", saved_spec, _plain(problem.model.objective_dict()),
             "Resume with the model that wrote it (or start a new checkpoint file).", path)
    _differs("backend", meta["backend"], backend, f"Resume with backend={meta['backend']!r}.",
             path)
    _differs("data", meta["data"], data_fingerprint(problem),
             "Resume with the same data, total_size and batch_size.", path)
    _differs("seed", meta["seed"], seed, f"Resume with seed={meta['seed']}: batches and noise "
             "follow (seed, step).", path)
    _differs("step rule", meta["rule"], rule, "Resume with the local_step= and global_step= "
             "the run was started with.", path)
    _differs("scale_cost_to_minibatch", meta["scale_cost_to_minibatch"],
             bool(problem.scale_cost_to_minibatch), "Resume with the same flag.", path)
    for name, w in problem.weights.items():
        saved = meta["weights"][name]
        if isinstance(w, Shared):
            if "shared" not in saved:
                _differs(f"weight {name}", saved, "a kq.Shared", "Pass the same kind of weight.",
                         path)
            w.value = saved["shared"]
        else:
            _differs(f"schedule of {name}", saved, _weight_dict(w),
                     "Resume with the weights the run was started with.", path)
    history = {k: np.asarray(ckpt.history[k], dtype=float) for k in ckpt.history}
    return FitResult(problem=problem, backend=backend, params=ckpt.params, history=history,
                     state=FitState(step=ckpt.step, optimizer=dict(ckpt.optimizer),
                                    backend=backend, rule=meta["rule"]),
                     interrupted=bool(meta.get("interrupted")),
                     info={"checkpoint": path})


def load_result(path):
    """The FitResult in a checkpoint, without data: q's parameters (``mean``, ``std``,
    ``sample``, ``summary``), the history, the state. Methods that need the training
    rows (``log_likelihood``, an amortized local's ``q``) say so.

    The model is rebuilt from the saved spec (``kq.Model.from_dict``; nothing is
    evaluated); to resume, pass the checkpoint's path to ``kq.fit(..., resume=path)``
    with your model and data.
    """
    from .model import Model
    from .problem import Problem
    from .results import FitResult, FitState

    ckpt = read(path)
    meta = ckpt.meta
    model = Model.from_dict(meta["spec"])
    weights = Weights(**{name: _weight_from(d, name) for name, d in meta["weights"].items()})
    problem = Problem(model=model, total_size=meta["data"]["total_size"],
                      batch_size=meta["data"]["batch_size"], weights=weights,
                      scale_cost_to_minibatch=meta["scale_cost_to_minibatch"])
    return FitResult(problem=problem, backend=meta["backend"], params=ckpt.params,
                     history={k: np.asarray(v, dtype=float) for k, v in ckpt.history.items()},
                     state=FitState(step=ckpt.step, optimizer=dict(ckpt.optimizer),
                                    backend=meta["backend"], rule=meta["rule"]),
                     interrupted=bool(meta.get("interrupted")),
                     info={"checkpoint": os.fspath(path), "dtype": meta.get("dtype"),
                           "written": meta.get("written")})


class Writer:
    """The callback that writes checkpoints during a fit (``due(step)`` tells the loop
    when it wants a result, so other chunks build none)."""

    def __init__(self, path, every: int, *, first_step: int, seed: int, steps_planned: int,
                 learning_rate):
        self.path, self.every = os.fspath(path), int(every)
        self.last = int(first_step)
        self.seed, self.steps_planned, self.learning_rate = seed, steps_planned, learning_rate
        self.written = 0

    def due(self, step: int) -> bool:
        return step - self.last >= self.every

    def __call__(self, step, result) -> None:
        self.write(result)

    def write(self, result) -> None:
        write(self.path, result, seed=self.seed, steps_planned=self.steps_planned,
              learning_rate=self.learning_rate)
        self.last = int(result.state.step)
        self.written += 1
