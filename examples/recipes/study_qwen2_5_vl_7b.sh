#!/usr/bin/env bash
# The study on Qwen2.5-VL-7B-Instruct (lmms-eval wrapper qwen2_5_vl).
exec "$(dirname "$0")/study.sh" Qwen/Qwen2.5-VL-7B-Instruct "${OUT:-out/study_qwen2_5_vl_7b}"
