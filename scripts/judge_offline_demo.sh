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
ALT=.venv/bin/alt

$ALT init --task dialogue
$ALT prompts import scripts/data/demo_prompts.jsonl --task dialogue
$ALT sample --task dialogue --n 2 --limit "$N" --max-new-tokens 32

# /v1 has no default key: the admin sets one for the demo (or a signed-in user makes their own in the app)
export ALT_SERVE_API_KEY=${ALT_SERVE_API_KEY:-demo-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')}
$ALT serve --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 1; done

export ALT_LLM_BASE_URL=http://127.0.0.1:$PORT/v1 ALT_LLM_API_KEY=$ALT_SERVE_API_KEY ALT_LLM_TIMEOUT=300
export ALT_LLM_MODEL
ALT_LLM_MODEL=$(curl -sf -H "Authorization: Bearer $ALT_LLM_API_KEY" "$ALT_LLM_BASE_URL/models" |
  .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "judge: $ALT_LLM_MODEL at $ALT_LLM_BASE_URL"

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
