# Sourced by the judge scripts: serve the app (ALT_DB, ALT_MODEL) on 127.0.0.1:$PORT and point the LLM judge at its
# own /v1 (ALT_LLM_BASE_URL, ALT_LLM_API_KEY, ALT_LLM_MODEL). Needs PORT, WORK, ALT and PY; kills the server on exit.
# /v1 has no default key: the admin sets one (or a signed-in user makes their own in the app).
export ALT_SERVE_API_KEY=${ALT_SERVE_API_KEY:-judge-$($PY -c 'import secrets; print(secrets.token_hex(16))')}
$ALT serve --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 1; done
export ALT_LLM_BASE_URL=http://127.0.0.1:$PORT/v1 ALT_LLM_API_KEY=$ALT_SERVE_API_KEY ALT_LLM_TIMEOUT=${ALT_LLM_TIMEOUT:-600}
export ALT_LLM_MODEL
ALT_LLM_MODEL=$(curl -sf -H "Authorization: Bearer $ALT_LLM_API_KEY" "$ALT_LLM_BASE_URL/models" |
  $PY -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "judge: $ALT_LLM_MODEL at $ALT_LLM_BASE_URL"
