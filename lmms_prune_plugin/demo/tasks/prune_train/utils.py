"""Task hooks of the prune_train task (see lmms_prune_plugin.demo.data.task_utils)."""

import sys
from pathlib import Path

try:
    import lmms_prune_plugin  # noqa: F401
except ImportError:  # used from a checkout through --include_path, without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from lmms_prune_plugin.demo.data.task_utils import (  # noqa: E402
    doc_to_target,
    doc_to_text,
    doc_to_visual,
    process_results,
)

__all__ = ["doc_to_target", "doc_to_text", "doc_to_visual", "process_results"]
