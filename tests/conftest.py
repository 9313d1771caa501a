import os

# Offline, and no third-party plugins leaking into the run.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LMMS_PRUNE_LOAD_ENTRYPOINTS"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own plan cache."""
    monkeypatch.setenv("LMMS_PRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def logged():
    """Messages sent through loguru (what lmms-eval users see) while the test runs."""
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO")
    yield messages
    logger.remove(sink)


@pytest.fixture
def no_load(monkeypatch):
    """``pruned_vlm``'s model load raises ``helpers.Loaded``; returns what it would have been
    given (so reaching the load is itself an outcome a test can check)."""
    from helpers import Loaded

    seen = {}

    def build(name, simple, **kwargs):
        seen.update(kwargs, _base=name)
        raise Loaded

    monkeypatch.setattr("lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm.build_wrapper", build)
    return seen
