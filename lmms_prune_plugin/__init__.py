"""Domain-aware layer pruning of vision-language models for lmms-eval."""

from pathlib import Path

__version__ = "0.1.0"

#: Folder of the lmms-eval task YAMLs shipped with the package (``--include_path``).
TASKS_DIR = str(Path(__file__).resolve().parent / "tasks")
