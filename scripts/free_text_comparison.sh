#!/usr/bin/env bash
# The free-text comparison (issue 20, docs/free_text.md): 3 rounds from the same start, prompts, sampling and
# budget — ALT on rule:free_text's sentences (concise_text), ALT on the same rule's information as categories of
# one attribute (alt@concise_score) and SFT on the score-3 samples — with length=short,subject=off held out of
# every pool. On a shared machine run it under the lock: flock /work/experiment.lock scripts/free_text_comparison.sh
set -euo pipefail
OUT=${1:-runs/free_text}
exec alt experiment --task concise_text --objective alt --objective alt@concise_score --objective sft \
  --rounds 3 --parallel 2 --holdout length=short,subject=off --model default --out "$OUT"
