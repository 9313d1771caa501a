"""Domain-aware layer pruning of vision-language models for lmms-eval."""

__version__ = "0.2.0"

from lmms_prune_plugin.demo import TASKS_DIR  # noqa: E402  (``--include_path`` for the shipped tasks)

__all__ = ["TASKS_DIR", "__version__"]
