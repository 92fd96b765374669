"""How each contender is timed.

Every runner starts its clock before building anything (model, guide, graph), runs
``steps`` optimizer steps on minibatches of the case's batch size, and marks
(steps done, seconds) after the first step or compiled chunk and at every multiple of
the chunk length (klqp's chunk: 500 steps by default). From the marks:

- steady steps/s: the MEDIAN over the chunks after the first (the warm-up, which holds
  every compile) of each chunk's steps / seconds. The median keeps a chunk slowed by
  another process on the machine from moving the figure; the slowest and fastest chunk
  and the mean rate over all steady steps are kept in the JSON.
- first call: seconds from the start to the end of the first step (build + compile +
  one step). A runner whose first mark comes after a compiled chunk of k steps (klqp,
  the lax.scan baselines) has the other k - 1 steps taken off at its steady rate; the
  raw mark is kept in the JSON.

Marks sit where the runner waits for its device anyway (or where a loop blocks on the
last loss), so JAX's asynchronous dispatch is inside the timed span.
"""

from __future__ import annotations

import collections
import math
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

import klqp as kq

LEARNING_RATE = 1e-2


@dataclass
class Timing:
    """What one runner measured on one case."""

    runner: str
    first_call_s: float
    steps_per_s: float        # median over the steady chunks
    steps_per_s_mean: float   # all steady steps / their seconds
    chunk_rates: list         # each steady chunk's steps/s, in order
    steps: int
    steady_steps: int
    first_mark_steps: int
    first_mark_s: float
    dtype: str
    final_loss: float         # mean loss of the last steps (up to 100): full-data nats
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class Clock:
    """Marks (steps done, seconds since the clock started)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.marks: list[tuple[int, float]] = []

    def mark(self, steps_done: int) -> None:
        self.marks.append((int(steps_done), time.perf_counter() - self.start))

    def timing(self, runner: str, warmup: int, *, dtype: str, final_loss: float,
               note: str = "") -> Timing:
        """First-call seconds and steady steps/s from the marks (see the module doc)."""
        first_steps, first_s = self.marks[0]
        steady = [(n, t) for n, t in self.marks if n >= warmup]
        if len(steady) < 2:
            raise ValueError(f"{runner}: no steps after the warm-up of {warmup}; raise --steps")
        rates = [(n1 - n0) / (t1 - t0) for (n0, t0), (n1, t1) in zip(steady, steady[1:])]
        (n0, t0), (n1, t1) = steady[0], steady[-1]
        rate = statistics.median(rates)
        return Timing(runner=runner, first_call_s=first_s - (first_steps - 1) / rate,
                      steps_per_s=rate, steps_per_s_mean=(n1 - n0) / (t1 - t0),
                      chunk_rates=rates, steps=n1, steady_steps=n1 - n0,
                      first_mark_steps=first_steps, first_mark_s=first_s, dtype=dtype,
                      final_loss=final_loss, note=note)


def _finite_loss(runner: str, losses) -> float:
    """The mean of the last (up to 100) losses, checked: a benchmark of a diverged run
    measures nothing useful. Every runner's loss is -ELBO in full-data nats (s = 1), so
    the figures of one case are comparable, up to minibatch and Monte Carlo noise."""
    last = float(np.mean(np.ravel(np.asarray(losses))[-100:]))
    if not math.isfinite(last):
        raise FloatingPointError(f"{runner}: the loss is {last} after training")
    return last


# -- klqp ------------------------------------------------------------------------------------

# kq.fit's global_step= for each --global-steps name: the default rule, its diagonal
# curvature only, and plain Adam steps (what the curvature costs, in the same run)
GLOBAL_STEPS = {"auto": "auto", "diagonal": kq.GlobalStep(dense_max=0), "none": None}


def klqp_runner_name(backend: str, mode: str | None, global_step: str = "auto") -> str:
    """klqp-numpyro, klqp-pymc[c], klqp-numpyro/diagonal, ..."""
    return (f"klqp-{backend}" + (f"[{mode}]" if mode else "")
            + ("" if global_step == "auto" else f"/{global_step}"))


def time_klqp(case, backend: str, steps: int, chunk: int, mode: str | None = None,
              global_step: str = "auto") -> Timing:
    """kq.fit as users call it; the callbacks between compiled chunks are the marks.
    ``global_step``: a GLOBAL_STEPS name; runners other than "auto" are named after it."""
    runner = klqp_runner_name(backend, mode, global_step)
    clock = Clock()
    model = case.klqp_model()
    result = kq.fit(model, case.data, backend=backend, steps=steps, batch_size=case.batch,
                    learning_rate=LEARNING_RATE, seed=0, progress=False, chunk_size=chunk,
                    callbacks=[lambda step, _result: clock.mark(step)],
                    backend_options={"mode": mode} if mode else None,
                    global_step=GLOBAL_STEPS[global_step])
    if result.steps != steps:
        raise RuntimeError(f"{runner}: ran {result.steps} of {steps} steps")
    return clock.timing(runner, warmup=chunk, dtype=result.info["dtype"],
                        final_loss=_finite_loss(runner, result.history["loss"]),
                        note=f"kq.fit, chunks of {chunk} steps")


# -- hand-written NumPyro --------------------------------------------------------------------

def _numpyro_svi(case):
    """The user's SVI object and its arguments (Adam at the same step size as klqp)."""
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    model, guide, args = case.numpyro_program()
    svi = SVI(model, guide, numpyro.optim.Adam(step_size=LEARNING_RATE), Trace_ELBO())
    return svi, args


def _numpyro_dtype(svi, state) -> str:
    """The float dtype of q's parameters (float64 only when JAX's x64 is on)."""
    dtypes = {str(p.dtype) for p in svi.get_params(state).values()}
    return dtypes.pop() if len(dtypes) == 1 else ",".join(sorted(dtypes))


def time_numpyro_loop(case, steps: int, chunk: int) -> Timing:
    """What users write: a jitted ``svi.update`` called from a Python loop."""
    import jax

    runner = "numpyro-hand-loop"
    clock = Clock()
    svi, args = _numpyro_svi(case)
    update = jax.jit(svi.update)
    state = svi.init(jax.random.PRNGKey(0), *args)
    state, loss = update(state, *args)
    loss.block_until_ready()
    clock.mark(1)
    last_losses = collections.deque(maxlen=100)  # device scalars: keeping them costs no wait
    for done in range(2, steps + 1):
        state, loss = update(state, *args)
        last_losses.append(loss)
        if done % chunk == 0:
            loss.block_until_ready()
            clock.mark(done)
    return clock.timing(runner, warmup=chunk, dtype=_numpyro_dtype(svi, state),
                        final_loss=_finite_loss(runner, [float(x) for x in last_losses]),
                        note="jax.jit(svi.update) in a Python loop")


def epoch_batches(rows: int, batch: int, first_step: int, count: int, seed: int = 0):
    """Row indices for steps first_step .. first_step+count-1, shape (count, batch): a
    fresh permutation each epoch of rows // batch batches, as klqp draws them."""
    per_epoch = rows // batch
    out = np.empty((count, batch), dtype=np.int64)
    perm, perm_epoch = None, None
    for i, step in enumerate(range(first_step, first_step + count)):
        epoch, pos = divmod(step, per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = np.random.default_rng([seed, epoch]).permutation(rows), epoch
        out[i] = perm[pos * batch:(pos + 1) * batch]
    return out


def time_numpyro_scan(case, steps: int, chunk: int, epochs: bool = False) -> Timing:
    """The hand-written loop without Python between steps: ``lax.scan`` over chunks of
    ``svi.update``, the way klqp's NumPyro backend runs its steps. ``epochs``: each step's rows come from a
    per-epoch permutation made on the host (the plate then only supplies N/b) instead of
    the plate's own subsample draw."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    runner = "numpyro-hand-epochs" if epochs else "numpyro-hand-scan"
    clock = Clock()
    svi, args = _numpyro_svi(case)

    @jax.jit
    def run_chunk(state, indices, *args):
        def body(state, idx):
            return svi.update(state, *args, idx=idx) if epochs else svi.update(state, *args)
        return lax.scan(body, state, indices, length=chunk)

    state = svi.init(jax.random.PRNGKey(0), *args)
    for done in range(chunk, steps + 1, chunk):
        indices = (jnp.asarray(epoch_batches(case.rows, case.batch, done - chunk, chunk))
                   if epochs else None)
        state, losses = run_chunk(state, indices, *args)
        losses.block_until_ready()
        clock.mark(done)
    how = "rows from a host-made epoch permutation" if epochs else "the plate's subsample"
    return clock.timing(runner, warmup=chunk, dtype=_numpyro_dtype(svi, state),
                        final_loss=_finite_loss(runner, losses),
                        note=f"jax.jit(lax.scan(svi.update)), chunks of {chunk} steps, {how}")


# -- hand-written PyMC -----------------------------------------------------------------------

def time_pymc_fit(case, steps: int, chunk: int, mode: str) -> Timing:
    """What users write: pm.Minibatch + total_size + pm.fit with ADVI and pm.adam; a
    callback (pm.fit calls it after every step with the step count) makes the marks."""
    import logging
    import warnings

    import pymc as pm
    import pytensor

    logging.getLogger("pymc").setLevel(logging.WARNING)  # pm.fit's "Finished [100%]" line
    runner = f"pymc-hand[{mode}]"
    clock = Clock()

    def mark(_approx, _losses, done):
        if done == 1 or done % chunk == 0:
            clock.mark(done)

    with case.pymc_model(), warnings.catch_warnings():
        # The JAX linker works on a copy of pm.Minibatch's generator and says so once.
        warnings.filterwarnings("ignore", message="The RandomType SharedVariables")
        advi = pm.ADVI(random_seed=0)
        # PyMC's default s = b/N; klqp's and NumPyro's is 1. Same work per step and the
        # same optimum either way, but s = 1 makes the losses comparable.
        advi.approx.scale_cost_to_minibatch = False
        approx = pm.fit(n=steps, method=advi, obj_optimizer=pm.adam(learning_rate=LEARNING_RATE),
                        backend=mode, progressbar=False, callbacks=[mark])
    return clock.timing(runner, warmup=chunk, dtype=pytensor.config.floatX,
                        final_loss=_finite_loss(runner, approx.hist),
                        note="pm.Minibatch + total_size + pm.fit(method=pm.ADVI(), obj_optimizer=pm.adam), "
                             "scale_cost_to_minibatch=False")
