#!/usr/bin/env bash
# Property-based tests of the REST API against its own OpenAPI document: starts the real
# `target/debug/herald` (embedded mode, a temporary data dir, a free port, a known admin token),
# creates a project and an API key with every scope through the admin API, then runs
# schemathesis against `GET /openapi.json`: it generates valid and invalid requests for every
# operation from the document and checks each answer against it (status documented, body
# matching its schema, invalid data refused, valid data accepted, no 5xx, auth enforced,
# resources created are readable and deleted ones gone). Fails on any failure, on a panic in
# the server's log, or when the server died during the run. Stops the server on every exit.
#
# Needs: target/debug/herald (cargo build -p herald-server --bins) and schemathesis in
# target/schemathesis-venv (scripts/setup installs it). Environment knobs:
#   SCHEMATHESIS_MAX_EXAMPLES  examples per operation and phase (default 100: ~1.5 min on 2 cores)
#   SCHEMATHESIS_SEED          the run's seed (default fixed, so CI runs are reproducible; any
#                              other value explores other inputs)
#   SCHEMATHESIS               the schemathesis executable
#   HERALD_BIN                 the herald binary
set -euo pipefail
cd "$(dirname "$0")/../.."

herald=${HERALD_BIN:-target/debug/herald}
schemathesis=${SCHEMATHESIS:-target/schemathesis-venv/bin/schemathesis}
python=$(dirname "$schemathesis")/python
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20261201}
config=$PWD/tests/schemathesis/schemathesis.toml
case $schemathesis in /*) ;; *) schemathesis=$PWD/$schemathesis ;; esac
case $python in /*) ;; *) python=$PWD/$python ;; esac

[ -x "$herald" ] || { echo "no $herald: run cargo build -p herald-server --bins" >&2; exit 1; }
[ -x "$schemathesis" ] || { echo "no $schemathesis: run scripts/setup" >&2; exit 1; }

work=$(mktemp -d)
server_pid=
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # Bounded: the drain ends within a few seconds; then it is killed.
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

admin_token=$("$python" -c 'import secrets; print("st-admin-" + secrets.token_hex(16))')
"$herald" serve --bind 127.0.0.1:0 --data-dir "$work/data" --admin-token "$admin_token" \
  >"$work/stdout" 2>"$work/server.log" &
server_pid=$!

base=
for _ in $(seq 300); do
  base=$(sed -n 's/^herald listening on //p' "$work/stdout")
  [ -n "$base" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "herald exited before listening:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$base" ] || { echo "herald did not listen within 30 s" >&2; exit 1; }
echo "herald at $base (log: server.log in a temporary dir, shown on failure)"

# A project with an id schemathesis will not guess (so it never deletes it), and a key with
# every scope the document lists.
curl -fsS "$base/openapi.json" -o "$work/openapi.json"
scopes=$("$python" -c 'import json, sys
doc = json.load(open(sys.argv[1]))
print(json.dumps(doc["components"]["schemas"]["ApiKeyScope"]["enum"]))' "$work/openapi.json")
project="schemathesis-$("$python" -c 'import secrets; print(secrets.token_hex(6))')"
curl -fsS -X POST "$base/v1/admin/projects" -H "Authorization: Bearer $admin_token" \
  -H 'Content-Type: application/json' -d "{\"id\": \"$project\", \"name\": \"schemathesis\"}" >/dev/null
api_key=$(curl -fsS -X POST "$base/v1/admin/projects/$project/api-keys" \
  -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
  -d "{\"name\": \"schemathesis\", \"scopes\": $scopes}" \
  | "$python" -c 'import json, sys; print(json.load(sys.stdin)["key"])')
echo "project $project, API key with scopes $scopes"

export ST_HERALD_ADMIN_TOKEN="$admin_token" ST_HERALD_API_KEY="$api_key"
export SCHEMATHESIS_HOOKS=$PWD/tests/schemathesis/hooks.py
status=0
# From the temporary dir, so nothing schemathesis writes lands in the work tree. One worker:
# with more, Python 3.11's ast module (Hypothesis describes strategies with it) can fail with
# "AST constructor recursion depth mismatch" when two threads parse at once (a CPython bug).
(cd "$work" && "$schemathesis" --config-file "$config" run "$base/openapi.json" \
  --checks all \
  --max-examples "$max_examples" \
  --seed "$seed" \
  --workers 1 \
  --request-timeout 10 \
  --generation-database none \
  --no-color) || status=$?

if grep -n 'panicked' "$work/server.log" >&2; then
  echo "herald panicked during the run (lines above)" >&2
  status=1
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "herald died during the run; its log:" >&2
  tail -50 "$work/server.log" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis: FAILED (exit $status); the last lines of herald's log:" >&2
  tail -20 "$work/server.log" >&2
fi
exit "$status"
