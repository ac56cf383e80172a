#!/usr/bin/env bash
# The official Python SDK (dialnexa 0.1.1) against `dialnexa-gateway sim` directly, then through a
# gateway configured in front of that simulator. Installs the SDK from the package registry into a
# virtualenv of its own; when the registry (or python3's venv module) is unavailable it says SKIP
# and exits 0, so an offline machine is told, not failed.
#
#   bash tests/sdk/run.sh            # uses target/debug/dialnexa-gateway (built if missing)
#   BIN=path/to/dialnexa-gateway bash tests/sdk/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/debug/dialnexa-gateway}
SDK_VERSION=0.1.1

if [ ! -x "$BIN" ]; then
    cargo build --quiet --locked
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

skip() {
    echo "SKIP: $* (the SDK check did not run)"
    exit 0
}

if ! command -v python3 >/dev/null 2>&1; then
    skip "python3 is not installed"
fi
if ! python3 -m venv "$WORK/venv" >"$WORK/venv.log" 2>&1; then
    cat "$WORK/venv.log"
    skip "python3 cannot create a virtualenv (the venv module is missing)"
fi
if ! PIP_DEFAULT_TIMEOUT=20 "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check \
        --retries 1 "dialnexa==$SDK_VERSION" >"$WORK/pip.log" 2>&1; then
    tail -n 5 "$WORK/pip.log"
    skip "cannot install dialnexa==$SDK_VERSION from the package registry (unreachable?)"
fi
PY=$WORK/venv/bin/python

# Waits for a line starting with $2 in file $1 and prints the rest of it.
wait_line() {
    local file=$1 prefix=$2 line
    for _ in $(seq 1 200); do
        line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            echo "${line#"$prefix"}"
            return 0
        fi
        sleep 0.05
    done
    echo "no '$prefix' line in $file:" >&2
    cat "$file" >&2
    return 1
}

# Waits for the gateway's `listening` line in its JSON log $1 and prints the API address it bound.
listening_api() {
    local file=$1 line
    for _ in $(seq 1 200); do
        line=$(grep -m1 '"dialnexa-gateway listening"' "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            printf '%s\n' "$line" | sed -n 's/.*"api":"\([^"]*\)".*/\1/p'
            return 0
        fi
        sleep 0.05
    done
    echo "the gateway did not say where it listens:" >&2
    cat "$file" >&2
    return 1
}

echo "=== the SDK against dialnexa-gateway sim ==="
"$BIN" sim --listen 127.0.0.1:0 >"$WORK/sim.out" 2>"$WORK/sim.err" &
PIDS+=($!)
SIM_URL=$(wait_line "$WORK/sim.out" "URL: ")
ORG_KEY=$(wait_line "$WORK/sim.out" "Key: ")
SIM_BASE=${SIM_URL%/v1}
# The SDK calls the legacy unversioned paths on its base URL, which the simulator also serves.
DIALNEXA_API_KEY=$ORG_KEY "$PY" tests/sdk/check_sdk.py --base-url "$SIM_BASE"

echo "=== the SDK through the gateway in front of it ==="
TEAM_KEY=$("$BIN" gen-key)
ADMIN_TOKEN=$("$BIN" gen-key)
printf '%s' "$ORG_KEY" >"$WORK/org.key"
cat >"$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
base_url = "$SIM_URL"
[audit]
sink = "file"
path = "$WORK/audit.jsonl"
[admin]
token_sha256 = "$(printf '%s' "$ADMIN_TOKEN" | "$BIN" hash-key)"
[orgs.sdk]
api_key_file = "$WORK/org.key"
[teams.sdk]
org = "sdk"
key_sha256 = ["$(printf '%s' "$TEAM_KEY" | "$BIN" hash-key)"]
rate_limit = { per_minute = 6000, burst = 100 }
TOML
# Port 0: the gateway binds free ports itself and names them in its `listening` log line.
"$BIN" --log-format json --config "$WORK/gateway.toml" \
    >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
PIDS+=($!)
API_ADDR=$(listening_api "$WORK/gateway.err")
DIALNEXA_API_KEY=$TEAM_KEY "$PY" tests/sdk/check_sdk.py --base-url "http://$API_ADDR" --through-gateway

echo "PASS: dialnexa==$SDK_VERSION works against sim directly and through the gateway"
