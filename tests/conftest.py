import os
import pathlib

import pytest

# The agreement tests compare in float64; set before anything imports jax.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu") if not os.environ.get("KLQP_GPU") else None
os.environ.setdefault("CI", os.environ.get("CI", ""))
# Many tests compile the same program (the same model, shapes and step rule): JAX's
# persistent cache, keyed by the compiled program itself, lets later ones load it. The
# suite ran in about half the time with it, from an empty cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


# pyproject runs the suite with `--dist loadgroup`: a file's tests go to one worker (they
# reuse the programs their fits compiled, klqp.cache, and module fixtures), except in the
# files whose tests share nothing (each example, each benchmark's smoke run), whose tests
# spread over the workers so that no worker is left with a long file at the end.
_SPREAD = {"test_examples.py", "test_bench.py"}


def pytest_itemcollected(item):
    """Each test's group, as it is collected (xdist reads the groups after collection)."""
    group = item.nodeid.split("::")[0]
    # test_bench's `report` tests share one run of bench/run.py (a module fixture)
    if item.path.name in _SPREAD and "report" not in getattr(item, "fixturenames", ()):
        group = item.nodeid
    item.add_marker(pytest.mark.xdist_group(group))
