import os

# The agreement tests compare in float64; set before anything imports jax.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu") if not os.environ.get("KLQP_GPU") else None
os.environ.setdefault("CI", os.environ.get("CI", ""))
