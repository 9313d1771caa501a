"""What the core asks of a harness: the exact model inputs it builds for calibration documents.

Calibration runs a harness's own input building and generation (one new token) on a domain's
documents while :class:`~lmms_prune_plugin.core.capture.LayerCapture` hooks the model, so the scores
are measured on what that harness feeds the model at evaluation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class CalibrationDocs:
    """One domain's calibration documents as one harness holds them, for this process."""

    task: str  # the harness's name for the data set
    payload: Any  # harness-specific: requests, messages, ...
    count: int  # documents this process runs
    total: int  # documents over all processes
    fingerprint: str  # content hash of the documents as the harness presents them


@runtime_checkable
class CalibrationSource(Protocol):
    """A harness adapter. ``harness`` is recorded in every plan and cache key it feeds."""

    harness: str

    def data_key(self) -> str:
        """Where this harness's task data come from (folders by content, versions): part of
        every calibration cache key, computed without loading a task."""
        ...

    def documents(
        self, task: str, limit: int | None, rank: int, world: int, param: str
    ) -> CalibrationDocs:
        """The first ``limit`` documents of ``task`` (this rank's share); errors name ``param``."""
        ...

    def run(self, docs: CalibrationDocs, batch_size: int) -> None:
        """Feed the documents to the model exactly as this harness does, generating one token
        (prefill), ``batch_size`` at a time where the harness batches."""
        ...
