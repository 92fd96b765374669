import os
import pathlib

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

