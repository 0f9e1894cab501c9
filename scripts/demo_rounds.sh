#!/bin/bash
# Two ALT rounds end to end on the offline default model (SmolLM2-135M-Instruct), rule feedback, CPU.
# Prints per-stage wall times and each version's metrics. Usage: scripts/demo_rounds.sh [DB] [MODELS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export ALT_DB=${1:-/tmp/alt-demo/demo.db} ALT_MODELS_DIR=${2:-/tmp/alt-demo/models}
mkdir -p "$(dirname "$ALT_DB")"
.venv/bin/alt init --model default
.venv/bin/alt prompts import scripts/data/demo_prompts.jsonl   # 18 train + 6 probe prompts
.venv/bin/alt round --model default --provider rule:concise --n 2 --max-new-tokens 40 \
  --rounds 2 --promote always --epochs 2 --learning_rate 5e-5 --batch_size 8 \
  --eval-n 2 --eval-max-new-tokens 40 --report_to none
.venv/bin/alt models list
