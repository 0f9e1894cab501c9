#!/usr/bin/env bash
# llm:free_text against the app's own /v1 on the default model, scored against rule:free_text (issue 20):
# parse rate and agreement of the judge's 0-3 score with the rule's on the same generations. No tuning.
#
#   scripts/free_text_judge.sh [N_PROMPTS=20] [PORT=7873]      (2 samples per prompt: 40 generations)
#
# Uses a temporary database (kept; its path is printed). On a shared machine: flock /work/experiment.lock …
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
PORT=${2:-7873}
WORK=$(mktemp -d)
export ALT_DB=$WORK/judge.db ALT_MODEL=${ALT_MODEL:-default}
ALT=${ALT:-alt}
PY=${PY:-python}
RULE=rule:free_text:length,subject

$ALT init --task concise_text
$ALT prompts import --builtin concise_text --task concise_text
$ALT sample --task concise_text --n 2 --limit "$N" --seed 7
$ALT feedback --task concise_text --provider "$RULE"

source scripts/serve_self_judge.sh
time $ALT feedback --task concise_text --provider llm:free_text || echo "judge run failed (see above)"
$PY - "$ALT_DB" "$RULE" <<'PY'
import sqlite3, sys
db, rule = sqlite3.connect(sys.argv[1]), sys.argv[2]
gens = [g for (g,) in db.execute("select id from generation where round_id is not null")]
def scores(where):
    return dict(db.execute(f"select generation_id, score from feedback where kind = 'text' and {where}"))
ruled, judged = scores(f"source = '{rule}'"), scores("source like 'llm:%'")
both = [g for g in gens if g in ruled and g in judged]
exact = sum(ruled[g] == judged[g] for g in both)
near = sum(abs(ruled[g] - judged[g]) <= 1 for g in both)
calls = db.execute("select sum(ok), count(*) from judgecall").fetchone()
print(f"generations {len(gens)}; judge feedback parsed {len(judged)}/{len(gens)} ({len(judged) / len(gens):.0%}); "
      f"judge calls ok/all {calls[0]}/{calls[1]}")
if both:
    import numpy as np
    r, j = np.array([ruled[g] for g in both]), np.array([judged[g] for g in both])
    corr = float(np.corrcoef(r, j)[0, 1]) if r.std() and j.std() else float("nan")
    print(f"score agreement with {rule}: exact {exact}/{len(both)} ({exact / len(both):.0%}), within 1 "
          f"{near}/{len(both)} ({near / len(both):.0%}), Pearson r {corr:+.2f}; judge scores "
          f"{dict(zip(*np.unique(j, return_counts=True)))}, rule scores {dict(zip(*np.unique(r, return_counts=True)))}")
for g in both[:6]:
    (text,) = db.execute("select text from feedback where generation_id = ? and source like 'llm:%'", (g,)).fetchone()
    print(f"  gen {g}: rule {ruled[g]:.0f}, judge {judged[g]:.0f}: {text!r}")
PY
echo "database kept at $ALT_DB"
