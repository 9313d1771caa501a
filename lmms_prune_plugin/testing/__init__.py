"""Test utilities: tiny random VLMs built offline from configs (like ``transformers.testing_utils``).

Nothing in the method imports this package; tests, examples and benchmarks do.
"""

from lmms_prune_plugin.testing.tiny import (
    ARCHITECTURES,
    LMMS_EVAL_WRAPPERS,
    build_tiny_vlm,
    save_tiny_vlm,
    wrapper_kwargs,
)

__all__ = [
    "ARCHITECTURES",
    "LMMS_EVAL_WRAPPERS",
    "build_tiny_vlm",
    "save_tiny_vlm",
    "wrapper_kwargs",
]
