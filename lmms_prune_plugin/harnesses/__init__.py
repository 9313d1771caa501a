"""Adapters between the harness-neutral core and each evaluation harness.

The core (planner, capture, criteria, strategies, plans, cache, surgery, export, healing)
imports no harness; each harness module here is imported only by the process that runs that
harness (``import vlmeval`` turns certificate checks off for the whole process).
"""

from lmms_prune_plugin.harnesses.base import CalibrationDocs, CalibrationSource

__all__ = ["CalibrationDocs", "CalibrationSource"]
