#!/usr/bin/env bash
# The LLM judge end to end, offline: the app serves the default model (SmolLM2-135M-Instruct) on
# its own OpenAI-compatible endpoint and `alt feedback --provider llm:categorical` labels a round
# through it (then llm:free_text on a second round).
#
#   scripts/judge_offline_demo.sh [PORT] [N_PROMPTS]
#
# Uses a temporary database; prints the judge's labels and the per-run stats. On 2 CPU cores the
# judge prompt (~700 tokens with few-shot examples) dominates: expect ~25 s per batch of 8 items.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-7871}
N=${2:-4}
WORK=$(mktemp -d)
export ALT_DB=$WORK/demo.db ALT_MODEL=${ALT_MODEL:-default}
ALT=.venv/bin/alt PY=.venv/bin/python ALT_LLM_TIMEOUT=300

$ALT init --task dialogue
$ALT prompts import scripts/data/demo_prompts.jsonl --task dialogue
$ALT sample --task dialogue --n 2 --limit "$N" --max-new-tokens 32

source scripts/serve_self_judge.sh

time $ALT feedback -v --task dialogue --provider llm:categorical 2>&1 | grep -v "HTTP Request"
# free text on a second round (both modes share the provenance llm:<model>)
$ALT sample --task dialogue --n 2 --limit "$N" --max-new-tokens 32 --seed 1
time $ALT feedback -v --task dialogue --provider llm:free_text 2>&1 | grep -v "HTTP Request"
.venv/bin/python - <<EOF
import sqlite3
db = sqlite3.connect("$ALT_DB")
for row in db.execute("select generation_id, source, kind, category, text, score from feedback order by id"):
    print(row)
print("judge calls (ok / all):", db.execute("select sum(ok), count(*) from judgecall").fetchone())
EOF
echo "database kept at $ALT_DB"
