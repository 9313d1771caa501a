#!/usr/bin/env bash
# The study on Qwen3-VL-4B-Instruct (36 decoder layers: budgets 4, 7, 11, 14, 18).
# Estimate on one H100-class GPU, LIMIT=500: about 185 GPU hours (assumptions in
# study_qwen3_vl.sh); LIMIT= (every document) about 3.6x that.
exec "$(dirname "$0")/study_qwen3_vl.sh" Qwen/Qwen3-VL-4B-Instruct "${OUT:-out/study_qwen3_vl_4b}"
