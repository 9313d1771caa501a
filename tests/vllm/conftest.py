"""The vLLM tests run only in the vLLM environment, through `make test-vllm`.

`make test` (the project's environment, which has no vLLM) does not collect them: this folder's
modules are ignored unless LMMS_PRUNE_VLLM_TESTS=1, which `make test-vllm` sets.
"""

import os

if os.environ.get("LMMS_PRUNE_VLLM_TESTS") != "1":
    collect_ignore_glob = ["*.py"]
