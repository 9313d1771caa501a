#!/usr/bin/env bash
# The study on LLaVA-OneVision-7B, HF classes (lmms-eval wrapper llava_hf).
exec "$(dirname "$0")/study.sh" llava-hf/llava-onevision-qwen2-7b-ov-hf "${OUT:-out/study_llava_onevision_7b}"
