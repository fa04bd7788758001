"""Test-wide settings: float64 is on for every exactness test (docs/architecture.md, "Precision").

Float32 paths are tested by passing ``dtype=jnp.float32`` explicitly, so enabling x64 here changes only the
defaults, never what a float32 test measures.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
