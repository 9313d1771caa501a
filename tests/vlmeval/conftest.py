"""The VLMEvalKit tests run only in VLMEvalKit's environment, through `make test-vlmeval`.

`make test` (the project's environment, which has lmms-eval and no VLMEvalKit: the two
conflict) does not collect them: this folder's modules are ignored unless
LMMS_PRUNE_VLMEVAL_TESTS=1, which `make test-vlmeval` sets.
"""

import os

if os.environ.get("LMMS_PRUNE_VLMEVAL_TESTS") != "1":
    collect_ignore_glob = ["*.py"]
else:
    import pytest

    @pytest.fixture(scope="session")
    def lmu_data(tmp_path_factory):
        """A data folder holding the demo TSVs (``$LMUData`` for the whole session)."""
        from lmms_prune_plugin.harnesses.vlmeval_data import write_demo_tsvs

        root = tmp_path_factory.mktemp("LMUData")
        write_demo_tsvs(root)
        os.environ["LMUData"] = str(root)
        return root

    @pytest.fixture(scope="session")
    def demo_chat(lmu_data):
        """The packaged demo model in lmms-prune's chat class, as the launcher builds it."""
        from lmms_prune_plugin.harnesses.vlmeval_models import DEMO_MODEL, build_inner

        model, _ = build_inner(DEMO_MODEL, None, {"max_new_tokens": 8})
        return model
