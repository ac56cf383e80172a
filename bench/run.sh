#!/usr/bin/env bash
# bench/run.sh: dialnexa-gateway against NGINX (proxy_cache) and HAProxy (cache) doing the same job,
# and against the ceiling (NGINX answering the same body itself), on this machine, in one run.
#
#   bench/run.sh                  full run (~10 s per scenario and proxy, ~4 min), updates docs/benchmarks.md
#   bench/run.sh --smoke          every scenario in 2 rounds of 1 s, small data sets, no docs (CI: keeps this from rotting)
#
# Options:
#   --smoke               2 rounds of 1 s runs, 1000 spread agents, 2000 RSS agents; docs untouched
#   --duration S          seconds per measured run (default 6)
#   --rounds N            measured runs per scenario and proxy, proxies in rotation (default 3);
#                         the report gives each figure's median over the rounds
#   --connections N       wrk connections (default 64)
#   --scenarios "A B"     subset of: hit-hot hit-spread miss-0ms miss-20ms mix rss cluster-hit-hot
#                         cluster-mix budget-flood (default: all)
#   --bin PATH            gateway binary to use instead of `cargo build --release` (e.g. target/debug/...)
#   --baseline PATH       a second gateway binary, run beside the first as proxy "baseline" in every
#                         rotation (same config), to measure a change against the build before it
#                         (scenario rss: a "baseline-rss" instance after "gateway-rss")
#   --install             apt-get install the Debian packages it needs when missing (root)
#   --docs FILE           where to write the figures (default docs/benchmarks.md; --no-docs: nowhere)
#   --label TEXT          heading of the docs section (default "Latest run"); one section per label
#   --keep                keep the work directory (configs, logs, wrk output) and print its path
# Environment: BENCH_PORT_BASE (default 18100; uses 15 ports from it), BENCH_PROXY_CPU (0),
#   BENCH_LOAD_CPU (1), BENCH_REDIS_CPU (BENCH_LOAD_CPU), BENCH_SLOW_MS (20),
#   BENCH_SPREAD_AGENTS (10000), BENCH_RSS_AGENTS (100000), BENCH_PATCH_PERCENT (10),
#   BENCH_WRK_THREADS (1).
#
# Every proxy runs pinned to BENCH_PROXY_CPU (the gateway with server.worker_threads = 1, NGINX with
# one worker, HAProxy with nbthread 1); wrk and the fake upstream share BENCH_LOAD_CPU. The figure
# that separates fast proxies is the proxy's own CPU time per request (utime+stime from
# /proc/<pid>/stat over the run, divided by the requests wrk completed). The gateway writes its audit
# log to a file throughout. Only ratios from one run are comparable: the machine's speed drifts.
#
# Cluster scenarios (cluster-hit-hot, cluster-mix): the same hot hit and GET/PATCH mix through the
# single-node gateway and, in the same rotation, through proxy "gateway-cluster": the same binary
# and config plus a [cluster] section (on_unavailable = "refuse", so a Redis failure shows as
# non-2xx answers) against a redis-server this script starts on its own loopback port (no
# persistence), pinned to BENCH_REDIS_CPU, and stops by PID. Beside the gateway's figures they
# report Redis's CPU time per request (/proc/<redis pid>/stat, like the proxies), Redis commands per
# request (the sum of `calls` in INFO commandstats deltas, INFO itself left out; this counts the
# commands a script runs inside Redis too, so it is not round trips), EVALSHA calls per request,
# and the gateway's own count of Redis round trips (dialnexa_gateway_cluster_redis_duration).
# Redis is only started (and redis-server only needed) when a cluster scenario is asked for.
#
# The org budget (budget-flood): a gateway whose organisation has an upstream budget
# (upstream_rate_limit, BENCH_BUDGET_PER_MINUTE a minute, burst BENCH_BUDGET_BURST) shared by three
# teams of share 1. Team "bench" floods cache misses with wrk (every request upstream-bound); team
# "steady" sends 4 misses a second, within its guaranteed part; team "idle" sends nothing. Reports the
# calls that reached upstream per second against the budget, and what each team got; fails if the
# steady team is ever refused or upstream saw more than the budget allows.
#
# Exit status: 0 when every proxy started, answered the sanity checks, and every run finished with
# no socket errors and no non-2xx answers; 1 otherwise; 2 for bad usage or missing tools.
# Loopback only: every server binds 127.0.0.1, every run is bounded in time.
# shellcheck disable=SC2034 # the template placeholders are read indirectly, by render()
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"

SMOKE=0
DURATION=6
ROUNDS=3
CONNS=64
SCENARIOS="hit-hot hit-spread miss-0ms miss-20ms mix rss cluster-hit-hot cluster-mix budget-flood"
BIN=""
BASELINE=""
INSTALL=0
DOCS="$ROOT/docs/benchmarks.md"
LABEL="Latest run"
KEEP=0
DURATION_SET=0
ROUNDS_SET=0
ARGS_TEXT="$(printf '%q ' "$@")"
ARGS_TEXT="${ARGS_TEXT% }"

usage() { sed -n '2,48p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --duration) DURATION="$2"; DURATION_SET=1; shift ;;
        --rounds) ROUNDS="$2"; ROUNDS_SET=1; shift ;;
        --connections) CONNS="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        --baseline) BASELINE="$2"; shift ;;
        --install) INSTALL=1 ;;
        --docs) DOCS="$2"; shift ;;
        --no-docs) DOCS="" ;;
        --label) LABEL="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
REDIS_CPU="${BENCH_REDIS_CPU:-$LOAD_CPU}"
SLOW_MS="${BENCH_SLOW_MS:-20}"
SPREAD_AGENTS="${BENCH_SPREAD_AGENTS:-10000}"
RSS_AGENTS="${BENCH_RSS_AGENTS:-100000}"
MIX_AGENTS=1000
PATCH_PERCENT="${BENCH_PATCH_PERCENT:-10}"
WRK_THREADS="${BENCH_WRK_THREADS:-1}"
PORT_BASE="${BENCH_PORT_BASE:-18100}"
if [ "$SMOKE" = 1 ]; then
    [ "$DURATION_SET" = 1 ] || DURATION=1
    # Two rounds, so the rotation and the medians are exercised too.
    [ "$ROUNDS_SET" = 1 ] || ROUNDS=2
    SPREAD_AGENTS="${BENCH_SPREAD_AGENTS:-1000}"
    RSS_AGENTS="${BENCH_RSS_AGENTS:-2000}"
    MIX_AGENTS=200
    DOCS=""
fi

UPSTREAM_PORT=$PORT_BASE
GATEWAY_PORT=$((PORT_BASE + 1))
GATEWAY_ADMIN_PORT=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 3))
HAPROXY_PORT=$((PORT_BASE + 4))
CEILING_PORT=$((PORT_BASE + 5))
RSS_PORT=$((PORT_BASE + 6))
RSS_ADMIN_PORT=$((PORT_BASE + 7))
BASELINE_PORT=$((PORT_BASE + 8))
BASELINE_ADMIN_PORT=$((PORT_BASE + 9))
CLUSTER_PORT=$((PORT_BASE + 10))
CLUSTER_ADMIN_PORT=$((PORT_BASE + 11))
REDIS_PORT=$((PORT_BASE + 12))
BUDGET_PORT=$((PORT_BASE + 13))
BUDGET_ADMIN_PORT=$((PORT_BASE + 14))
LAST_PORT=$((PORT_BASE + 14))
CLUSTER=0
case " $SCENARIOS " in *" cluster-"*) CLUSTER=1 ;; esac

# Made-up keys, used on loopback only.
TEAM_KEY="bench-team-key-not-a-secret"
ORG_KEY="bench-org-key-not-a-secret"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# === tools ===

need_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v haproxy >/dev/null || missing+=(haproxy)
    { command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ]; } || missing+=(nginx-light)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if [ "$CLUSTER" = 1 ]; then
        { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; } || missing+=(redis-server)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$INSTALL" = 1 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bench: missing ${missing[*]}: run with --install, or" >&2
        echo "  apt-get install -y --no-install-recommends nginx-light haproxy wrk redis-server" >&2
        exit 2
    fi
}

need_tools
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 CPUs; proxy and load share a core"

if [ -z "$BIN" ]; then
    log "building the gateway (cargo build --release --locked)"
    (cd "$ROOT" && cargo build --release --locked --quiet)
    BIN="$ROOT/target/release/dialnexa-gateway"
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "no baseline binary at $BASELINE"

# === work directory and processes ===

DIR="$(mktemp -d "${TMPDIR:-/tmp}/dnxgw-bench.XXXXXX")"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    NGINX_CACHE_DIR="$(mktemp -d /dev/shm/dnxgw-bench-nginx-cache.XXXXXX)"
else
    NGINX_CACHE_DIR="$DIR/nginx-cache"
fi
declare -A PID=()
FAILURES=()

cleanup() {
    local name
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        wait "${PID[$name]}" 2>/dev/null || true
    done
    rm -rf "$NGINX_CACHE_DIR"
    if [ "$KEEP" = 1 ]; then
        log "work directory kept: $DIR"
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Listeners started mid-run (the RSS instances) cannot bind a port that an outgoing connection took
# from the ephemeral range, so the ports must lie outside it.
read -r EPHEMERAL_LOW EPHEMERAL_HIGH </proc/sys/net/ipv4/ip_local_port_range || EPHEMERAL_LOW=32768 EPHEMERAL_HIGH=60999
if [ "$LAST_PORT" -ge "$EPHEMERAL_LOW" ] && [ "$PORT_BASE" -le "$EPHEMERAL_HIGH" ]; then
    die "BENCH_PORT_BASE $PORT_BASE overlaps the ephemeral port range $EPHEMERAL_LOW-$EPHEMERAL_HIGH"
fi
for p in $(seq "$PORT_BASE" "$LAST_PORT"); do
    port_free "$p" || die "port $p is in use (set BENCH_PORT_BASE)"
done

# Fills the @NAME@ placeholders of bench/$1 from the shell variables of the same name.
AGENT_TEMPLATE="$(<"$BENCH/agent.json")"
AGENT_JSON="${AGENT_TEMPLATE//@ID@/\$\{agent_id\}}"
SLOW_SECONDS="$(awk -v ms="$SLOW_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
CACHE_MAX_BYTES=536870912
AUDIT_FILE=audit.jsonl
render() {
    local text name
    text="$(<"$BENCH/$1")"
    for name in DIR UPSTREAM_PORT GATEWAY_PORT GATEWAY_ADMIN_PORT NGINX_PORT HAPROXY_PORT CEILING_PORT \
        SLOW_MS SLOW_SECONDS AGENT_JSON TEAM_KEY ORG_KEY TEAM_KEY_SHA256 CACHE_MAX_BYTES AUDIT_FILE \
        NGINX_CACHE_DIR; do
        text="${text//@$name@/${!name-}}"
    done
    if [[ "$text" =~ @[A-Z_]+@ ]]; then
        die "unfilled placeholder ${BASH_REMATCH[0]} in $1"
    fi
    printf '%s\n' "$text" >"$2"
}

# start NAME CPU COMMAND...: runs COMMAND pinned to CPU in the background.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$DIR/$name.out" 2>&1 &
    PID[$name]=$!
}

stop() {
    local name=$1
    kill "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" 2>/dev/null || true
    unset "PID[$name]"
}

# wait_up NAME URL: until URL answers (any status), or fail with the process's output.
wait_up() {
    local name=$1 url=$2
    for _ in $(seq 1 100); do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            cat "$DIR/$name.out" >&2 || true
            die "$name exited at start"
        fi
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    cat "$DIR/$name.out" >&2 || true
    die "$name did not come up on $url"
}

TEAM_KEY_SHA256="$(printf '%s' "$TEAM_KEY" | "$BIN" hash-key)"

start_upstream() {
    mkdir -p "$DIR/upstream-body"
    render upstream.nginx.conf "$DIR/upstream.nginx.conf"
    start upstream "$LOAD_CPU" nginx -e "$DIR/upstream.error.log" -p "$DIR" -c "$DIR/upstream.nginx.conf"
    wait_up upstream "http://127.0.0.1:$UPSTREAM_PORT/__status"
}

# start_gateway NAME PORT ADMIN_PORT CACHE_MAX_BYTES [BINARY] [cluster|budget]: with "cluster", the
# same config plus a [cluster] section against the benchmark's redis-server; with "budget", an
# upstream budget for the org and two more teams (budget-flood).
start_gateway() {
    local name=$1 bin=${5:-$BIN}
    GATEWAY_PORT=$2 GATEWAY_ADMIN_PORT=$3 CACHE_MAX_BYTES=$4 AUDIT_FILE="$name.audit.jsonl"
    render gateway.toml "$DIR/$name.toml"
    if [ "${6:-}" = cluster ]; then
        printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s"\nkey_prefix = "dnxgw-bench"\ntimeout_ms = 1000\non_unavailable = "refuse"\n' \
            "$REDIS_PORT" >>"$DIR/$name.toml"
    fi
    if [ "${6:-}" = budget ]; then
        sed -i "s/^api_key_env = \"DIALNEXA_KEY_BENCH\"\$/&\nupstream_rate_limit = { per_minute = $BUDGET_PER_MINUTE, burst = $BUDGET_BURST }/" "$DIR/$name.toml"
        grep -q '^upstream_rate_limit' "$DIR/$name.toml" || die "no budget in $name's config"
        local team key
        for team in steady idle; do
            key=${BUDGET_KEYS[$team]}
            printf '\n[teams.%s]\norg = "bench"\nkey_sha256 = ["%s"]\nrate_limit = { per_minute = 1000000000, burst = 1000000000 }\n' \
                "$team" "$(printf '%s' "$key" | "$bin" hash-key)" >>"$DIR/$name.toml"
        done
    fi
    DIALNEXA_KEY_BENCH="$ORG_KEY" "$bin" check --config "$DIR/$name.toml" >/dev/null || die "gateway config rejected"
    DIALNEXA_KEY_BENCH="$ORG_KEY" RUST_LOG=warn start "$name" "$PROXY_CPU" "$bin" --config "$DIR/$name.toml"
    wait_up "$name" "http://127.0.0.1:$GATEWAY_ADMIN_PORT/healthz"
    GATEWAY_PORT=$((PORT_BASE + 1)) GATEWAY_ADMIN_PORT=$((PORT_BASE + 2))
}

BUDGET_PER_MINUTE="${BENCH_BUDGET_PER_MINUTE:-1200}"
BUDGET_BURST="${BENCH_BUDGET_BURST:-30}"
declare -A BUDGET_KEYS=([steady]="bench-steady-team-key-not-a-secret" [idle]="bench-idle-team-key-not-a-secret")

redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

start_redis() {
    start redis "$REDIS_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR" \
        --save "" --appendonly no --daemonize no --logfile "" --databases 1
    for _ in $(seq 1 100); do
        kill -0 "${PID[redis]}" 2>/dev/null || { cat "$DIR/redis.out" >&2 || true; die "redis-server exited at start"; }
        [ "$(redis ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    cat "$DIR/redis.out" >&2 || true
    die "redis-server did not come up on port $REDIS_PORT"
}

# Prints "COMMAND CALLS" lines: Redis commands served so far by kind (INFO itself left out). The
# commands a script runs inside Redis count here too, beside the EVALSHA that ran it.
redis_calls() {
    redis info commandstats | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_/ && $1 != "cmdstat_info" { for (i = 2; i < NF; i++) if ($i == "calls") print substr($1, 9), $(i + 1) }'
}
# redis_calls_delta BEFORE AFTER REQUESTS: "command calls/request ..." for each kind, busiest first.
redis_calls_delta() {
    awk -v n="$3" 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d > 0) printf "%s %.3f\n", $1, n ? d / n : 0 }' "$1" "$2" |
        sort -k2,2nr | paste -sd' '
}

start_nginx() {
    mkdir -p "$DIR/nginx-body" "$DIR/nginx-proxy-temp" "$NGINX_CACHE_DIR"
    render nginx.conf "$DIR/nginx.conf"
    start nginx "$PROXY_CPU" nginx -e "$DIR/nginx.error.log" -p "$DIR" -c "$DIR/nginx.conf"
    wait_up nginx "http://127.0.0.1:$NGINX_PORT/"
}

start_haproxy() {
    printf '%s bench\n' "$TEAM_KEY" >"$DIR/haproxy-teams.map"
    printf 'bench bench\n' >"$DIR/haproxy-orgs.map"
    printf 'bench %s\n' "$ORG_KEY" >"$DIR/haproxy-org-keys.map"
    render haproxy.cfg "$DIR/haproxy.cfg"
    haproxy -c -q -f "$DIR/haproxy.cfg" >&2 || die "haproxy config rejected"
    start haproxy "$PROXY_CPU" haproxy -db -f "$DIR/haproxy.cfg"
    wait_up haproxy "http://127.0.0.1:$HAPROXY_PORT/"
}

start_ceiling() {
    mkdir -p "$DIR/ceiling-body"
    render ceiling.nginx.conf "$DIR/ceiling.nginx.conf"
    start ceiling "$PROXY_CPU" nginx -e "$DIR/ceiling.error.log" -p "$DIR" -c "$DIR/ceiling.nginx.conf"
    wait_up ceiling "http://127.0.0.1:$CEILING_PORT/v1/agents2/x"
}

declare -A PORT=([gateway]=$GATEWAY_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [ceiling]=$CEILING_PORT)
# The admin port of each gateway instance, where its audit lines are counted.
declare -A ADMIN=([gateway]=$GATEWAY_ADMIN_PORT)
PEERS=(gateway haproxy nginx)
if [ -n "$BASELINE" ]; then
    PORT[baseline]=$BASELINE_PORT
    ADMIN[baseline]=$BASELINE_ADMIN_PORT
    PEERS=(gateway baseline haproxy nginx)
fi
if [ "$CLUSTER" = 1 ]; then
    PORT[gateway-cluster]=$CLUSTER_PORT
    ADMIN[gateway-cluster]=$CLUSTER_ADMIN_PORT
fi

# === measuring ===

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
user_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 }'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
upstream_requests() {
    curl -s --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT/__status" | awk 'NR == 3 { print $3 }'
}
gateway_metric() { # NAME ADMIN_PORT
    curl -s --max-time 5 "http://127.0.0.1:$2/metrics" | awk -v m="$1" '$1 == m && !f { print $2; f = 1 }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Latency as wrk prints it (812.00us, 1.23ms, 2.01s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
        else print "nan" }'
}

wrk_load() { # DURATION URL [wrk args...]: wrk on the load core with the team key
    local duration=$1 url=$2
    shift 2
    taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${duration}s" --latency --timeout 5s \
        -H "Authorization: Bearer $TEAM_KEY" "$@" "$url" </dev/null
}

# warm PROXY PREFIX COUNT: fetches COUNT distinct agents (PREFIX000000, PREFIX000001, ...) through
# PROXY, 64 at a time over kept-alive connections (curl --parallel), so they are cached.
warm() {
    local proxy=$1 prefix=$2 count=$3 list="$DIR/warm-$1-$2.curl" out="$DIR/warm-$1-$2.txt" bad
    awk -v n="$count" -v base="http://127.0.0.1:${PORT[$proxy]}/v1/agents2/$prefix" 'BEGIN {
        for (i = 0; i < n; i++) printf "url = \"%s%06d\"\noutput = \"/dev/null\"\n", base, i }' >"$list"
    taskset -c "$LOAD_CPU" curl -s --parallel --parallel-max 64 --max-time 120 -w '%{http_code}\n' \
        -H "Authorization: Bearer $TEAM_KEY" -K "$list" >"$out" 2>"$out.err" || true
    bad=$(grep -vc '^200$' "$out" || true)
    [ "$bad" = 0 ] || FAILURES+=("warm $proxy: $bad of $count answers were not 200 ($(sort "$out" | uniq -c | sort -rn | head -3 | tr -s ' ' | paste -sd,))")
    rm -f "$list"
}

RESULTS="$DIR/results.tsv"
ROUND=1
printf 'scenario\tproxy\trps\tp50_us\tp99_us\tcpu_us\trequests\terrors\tnon2xx\tupstream_per_req\taudit_per_req\tuser_us\tround\tredis_cpu_us\tredis_calls_per_req\tevalsha_per_req\tround_trips_per_req\n' >"$RESULTS"

# measure SCENARIO PROXY URL [wrk args...]: one measured wrk run (round $ROUND), one row in results.tsv.
measure() {
    local scenario=$1 proxy=$2 url=$3
    shift 3
    local pid=${PID[$proxy]} out="$DIR/wrk-$scenario-$proxy-$ROUND.txt"
    local t0 t1 u0 u1 a0=0 a1=0 s0 s1
    local admin=${ADMIN[$proxy]:-}
    # Redis's figures in the cluster scenarios, for both gateways (the single-node one shows Redis idle).
    local rp=""
    if [[ $scenario == cluster-* ]]; then rp=${PID[redis]}; fi
    local r0=0 r1=0 k0=0 k1=0 c0="$DIR/redis-calls-before" c1="$DIR/redis-calls-after"
    [ -n "$admin" ] && a0=$(gateway_metric dialnexa_gateway_audit_lines_written_total "$admin")
    if [ -n "$rp" ]; then
        k0=$(gateway_metric dialnexa_gateway_cluster_redis_duration_seconds_count "$admin")
        redis_calls >"$c0"
        r0=$(cpu_ticks "$rp")
    fi
    u0=$(upstream_requests)
    t0=$(cpu_ticks "$pid")
    s0=$(user_ticks "$pid")
    wrk_load "$DURATION" "$url" "$@" >"$out" 2>&1 || { cat "$out" >&2; FAILURES+=("$scenario/$proxy: wrk failed"); }
    t1=$(cpu_ticks "$pid")
    s1=$(user_ticks "$pid")
    if [ -n "$rp" ]; then
        r1=$(cpu_ticks "$rp")
        redis_calls >"$c1"
        k1=$(gateway_metric dialnexa_gateway_cluster_redis_duration_seconds_count "$admin")
    fi
    u1=$(upstream_requests)
    if [ -n "$admin" ]; then
        sleep 0.2 # the audit writer drains its buffer
        a1=$(gateway_metric dialnexa_gateway_audit_lines_written_total "$admin")
        : >"$DIR/$proxy.audit.jsonl" # the lines were counted; keep the disk from filling
    fi
    kill -0 "$pid" 2>/dev/null || die "$proxy died during $scenario"

    local requests rps p50 p99 non2xx errors
    requests=$(awk '/ requests in / { print $1; exit }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$out")
    p50=$(to_us "$(awk '$1 == "50%" { print $2; exit }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2; exit }' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$out")
    errors=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10; exit }' "$out")
    requests=${requests:-0} rps=${rps:-0} non2xx=${non2xx:-0} errors=${errors:-0}
    local cpu upr apr usr
    cpu=$(awk -v d=$((t1 - t0)) -v n="$requests" -v t="$TICK_US" 'BEGIN { printf "%.2f", n ? d * t / n : 0 }')
    usr=$(awk -v d=$((s1 - s0)) -v n="$requests" -v t="$TICK_US" 'BEGIN { printf "%.2f", n ? d * t / n : 0 }')
    # The status request itself counts once.
    upr=$(awk -v d=$((u1 - u0 - 1)) -v n="$requests" 'BEGIN { printf "%.3f", n ? d / n : 0 }')
    apr=$(awk -v d=$((a1 - a0)) -v n="$requests" -v g="$admin" 'BEGIN { if (g == "") print "-"; else printf "%.3f", n ? d / n : 0 }')
    local rcpu=- rcalls=- reval=- rtrips=-
    if [ -n "$rp" ]; then
        rcpu=$(awk -v d=$((r1 - r0)) -v n="$requests" -v t="$TICK_US" 'BEGIN { printf "%.2f", n ? d * t / n : 0 }')
        local kinds
        kinds=$(redis_calls_delta "$c0" "$c1" "$requests")
        rcalls=$(awk -v n="$requests" 'NR == FNR { b[$1] = $2; next } { d += $2 - b[$1] } END { printf "%.3f", n ? d / n : 0 }' "$c0" "$c1")
        reval=$(awk -v n="$requests" 'NR == FNR { b[$1] = $2; next } $1 == "evalsha" { d += $2 - b[$1] } END { printf "%.3f", n ? d / n : 0 }' "$c0" "$c1")
        [ "$proxy" != gateway-cluster ] || printf '%s\t%s\t%s\n' "$scenario" "$ROUND" "$kinds" >>"$DIR/redis-kinds.tsv"
        rtrips=$(awk -v a="${k0:-0}" -v b="${k1:-0}" -v n="$requests" 'BEGIN { printf "%.3f", n ? (b - a) / n : 0 }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$proxy" "$rps" "$p50" "$p99" "$cpu" \
        "$requests" "$errors" "$non2xx" "$upr" "$apr" "$usr" "$ROUND" "$rcpu" "$rcalls" "$reval" "$rtrips" >>"$RESULTS"
    log "$(printf '%-10s %-8s round %s %9s req/s  p50 %7sus  p99 %7sus  cpu %6sus/req (user %s)  upstream/req %s  errors %s non2xx %s' \
        "$scenario" "$proxy" "$ROUND" "$rps" "$p50" "$p99" "$cpu" "$usr" "$upr" "$errors" "$non2xx")"
    [ -z "$rp" ] || log "$(printf '%-10s %-8s round %s redis cpu %sus/req  redis commands/req %s  evalsha/req %s  gateway round trips/req %s' \
        "$scenario" "$proxy" "$ROUND" "$rcpu" "$rcalls" "$reval" "$rtrips")${kinds:+ ($kinds)}"
    [ "$requests" -gt 0 ] || FAILURES+=("$scenario/$proxy: no request completed")
    [ "$errors" = 0 ] || FAILURES+=("$scenario/$proxy: $errors socket errors")
    [ "$non2xx" = 0 ] || FAILURES+=("$scenario/$proxy: $non2xx non-2xx answers")
}

# === sanity: the same job everywhere ===

sanity() {
    local proxy=$1 base="http://127.0.0.1:${PORT[$1]}" code headers
    code=$(curl -s -o /dev/null -w '%{http_code}' "$base/v1/agents2/sanity-1")
    [ "$proxy" = ceiling ] || [ "$code" = 401 ] || die "$proxy answered $code without a team key (expected 401)"
    curl -s -o /dev/null -H "Authorization: Bearer $TEAM_KEY" "$base/v1/agents2/sanity-1"
    headers=$(curl -s -D - -o "$DIR/sanity-$proxy.json" -H "Authorization: Bearer $TEAM_KEY" "$base/v1/agents2/sanity-1")
    grep -q '^HTTP/1.1 200' <<<"$headers" || die "$proxy: GET with the team key did not answer 200"
    grep -q '"id":"sanity-1"' "$DIR/sanity-$proxy.json" || die "$proxy: unexpected body"
    case $proxy in
        gateway|baseline|gateway-cluster) grep -qi '^x-cache: HIT' <<<"$headers" || die "$proxy: second GET was not a cache hit" ;;
        nginx) grep -qi '^x-cache: HIT' <<<"$headers" || die "nginx: second GET was not a cache hit" ;;
        haproxy) grep -qi '^age:' <<<"$headers" || die "haproxy: second GET was not a cache hit" ;;
    esac
}

# === scenarios ===

NONCE="$(date +%s%N | tail -c 9)"

# rounds PROXY...: the proxies once per round, each round starting one further along the list, so
# that no proxy always runs first or last while the machine's speed drifts. Prints "ROUND PROXY".
rounds() {
    local round i n=$#
    local proxies=("$@")
    for round in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            echo "$round ${proxies[$(((i + round - 1) % n))]}"
        done
    done
}

scenario_hit_hot() {
    local proxy
    for proxy in "${PEERS[@]}"; do
        curl -s -o /dev/null -H "Authorization: Bearer $TEAM_KEY" "http://127.0.0.1:${PORT[$proxy]}/v1/agents2/hot-000001"
    done
    while read -r ROUND proxy; do
        measure hit-hot "$proxy" "http://127.0.0.1:${PORT[$proxy]}/v1/agents2/hot-000001"
    done < <(rounds "${PEERS[@]}" ceiling)
}

scenario_hit_spread() {
    local proxy
    for proxy in "${PEERS[@]}"; do
        warm "$proxy" "s$NONCE" "$SPREAD_AGENTS"
    done
    while read -r ROUND proxy; do
        BENCH_AGENTS=$SPREAD_AGENTS BENCH_PREFIX="s$NONCE" measure hit-spread "$proxy" \
            "http://127.0.0.1:${PORT[$proxy]}/" -s "$BENCH/lua/spread.lua"
    done < <(rounds "${PEERS[@]}" ceiling)
}

scenario_miss() { # NAME PREFIX
    local proxy
    # A prefix per proxy and round: every request of every run is a miss.
    while read -r ROUND proxy; do
        BENCH_PREFIX="$2$NONCE-$proxy-$ROUND-" measure "$1" "$proxy" "http://127.0.0.1:${PORT[$proxy]}/" -s "$BENCH/lua/unique.lua"
    done < <(rounds "${PEERS[@]}")
}

scenario_mix() {
    local proxy
    for proxy in "${PEERS[@]}"; do
        warm "$proxy" "x$NONCE" "$MIX_AGENTS"
    done
    while read -r ROUND proxy; do
        BENCH_AGENTS=$MIX_AGENTS BENCH_PREFIX="x$NONCE" BENCH_PATCH_PERCENT=$PATCH_PERCENT measure mix "$proxy" \
            "http://127.0.0.1:${PORT[$proxy]}/" -s "$BENCH/lua/mix.lua"
    done < <(rounds "${PEERS[@]}")
}

# The cluster scenarios: the single-node gateway and the one in cluster mode, in one rotation.
CLUSTER_PEERS=(gateway gateway-cluster)

scenario_cluster_hit_hot() {
    local proxy
    for proxy in "${CLUSTER_PEERS[@]}"; do
        curl -s -o /dev/null -H "Authorization: Bearer $TEAM_KEY" "http://127.0.0.1:${PORT[$proxy]}/v1/agents2/chot-000001"
    done
    while read -r ROUND proxy; do
        measure cluster-hit-hot "$proxy" "http://127.0.0.1:${PORT[$proxy]}/v1/agents2/chot-000001"
    done < <(rounds "${CLUSTER_PEERS[@]}")
}

scenario_cluster_mix() {
    local proxy
    for proxy in "${CLUSTER_PEERS[@]}"; do
        warm "$proxy" "cx$NONCE" "$MIX_AGENTS"
    done
    while read -r ROUND proxy; do
        BENCH_AGENTS=$MIX_AGENTS BENCH_PREFIX="cx$NONCE" BENCH_PATCH_PERCENT=$PATCH_PERCENT measure cluster-mix "$proxy" \
            "http://127.0.0.1:${PORT[$proxy]}/" -s "$BENCH/lua/mix.lua"
    done < <(rounds "${CLUSTER_PEERS[@]}")
}

BUDGET_LINES=()
# budget_calls ADMIN_PORT TEAM: the team's calls upstream so far; budget_refused likewise, refusals
# for the org's budget.
budget_calls() { gateway_metric "dialnexa_gateway_upstream_calls_total{org=\"bench\",team=\"$2\"}" "$1"; }
budget_refused() {
    gateway_metric "dialnexa_gateway_org_budget_refused_total{org=\"bench\",team=\"$2\",reason=\"org\"}" "$1"
}

scenario_budget_flood() {
    local name=gateway-budget base="http://127.0.0.1:$BUDGET_PORT" proxy team steady_out wrk_out up_before up_after
    local steady_pid calls_per_s allowed refused_steady line
    local -A before=() after=() refused_before=() refused_after=()
    start_gateway "$name" "$BUDGET_PORT" "$BUDGET_ADMIN_PORT" "$CACHE_MAX_BYTES" "$BIN" budget
    PORT[$name]=$BUDGET_PORT
    while read -r ROUND proxy; do
        steady_out="$DIR/budget-steady-$ROUND.txt" wrk_out="$DIR/wrk-budget-flood-$ROUND.txt"
        up_before=$(upstream_requests)
        for team in bench steady idle; do
            before[$team]=$(budget_calls "$BUDGET_ADMIN_PORT" "$team")
            refused_before[$team]=$(budget_refused "$BUDGET_ADMIN_PORT" "$team")
        done
        # The steady team: 4 misses a second for the run (its part is a third of the budget).
        for i in $(seq 1 $((DURATION * 4))); do
            curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -H "Authorization: Bearer ${BUDGET_KEYS[steady]}" \
                "$base/v1/agents2/bs$NONCE-$ROUND-$i"
            sleep 0.25
        done >"$steady_out" &
        steady_pid=$!
        BENCH_PREFIX="bf$NONCE-$ROUND" wrk_load "$DURATION" "$base/" -s "$BENCH/lua/unique.lua" >"$wrk_out" 2>&1 ||
            FAILURES+=("budget-flood: wrk failed")
        wait "$steady_pid" || true
        up_after=$(upstream_requests)
        for team in bench steady idle; do
            after[$team]=$(budget_calls "$BUDGET_ADMIN_PORT" "$team")
            refused_after[$team]=$(budget_refused "$BUDGET_ADMIN_PORT" "$team")
        done
        refused_steady=$(grep -vc '^200$' "$steady_out" || true)
        calls_per_s=$(awk -v a="$up_after" -v b="$up_before" -v d="$DURATION" 'BEGIN { printf "%.1f", (a - b) / d }')
        # The budget over the run: the burst, plus the rate over the run and the steady team's tail.
        allowed=$(awk -v pm="$BUDGET_PER_MINUTE" -v b="$BUDGET_BURST" -v d="$DURATION" 'BEGIN { printf "%d", b + pm / 60 * (d + 1.5) }')
        line=$(awk -v r="$ROUND" -v rate="$calls_per_s" -v pm="$BUDGET_PER_MINUTE" -v b="$BUDGET_BURST" -v d="$DURATION" \
            -v fb="${before[bench]}" -v fa="${after[bench]}" -v sb="${before[steady]}" -v sa="${after[steady]}" \
            -v ib="${before[idle]}" -v ia="${after[idle]}" -v rb="${refused_before[bench]}" -v ra="${refused_after[bench]}" \
            -v rs="$refused_steady" 'BEGIN {
                printf "%s\t%.1f\t%s\t%d\t%.1f\t%.0f\t%.1f\t%s\t%.1f", r, pm / 60, rate, b, (fa - fb) / d, (ra - rb) / d, (sa - sb) / d, rs, (ia - ib) / d }')
        BUDGET_LINES+=("$line")
        log "$(awk -F'\t' '{ printf "budget-flood round %s: upstream %s calls/s against a budget of %s/s (burst %s); flood team %s calls/s (%s/s refused), steady team %s calls/s (%s refused), idle team %s calls/s", $1, $3, $2, $4, $5, $6, $7, $8, $9 }' <<<"$line")"
        [ "$refused_steady" = 0 ] || FAILURES+=("budget-flood: the steady team was refused $refused_steady times within its part")
        [ $((up_after - up_before)) -le "$allowed" ] ||
            FAILURES+=("budget-flood: $((up_after - up_before)) calls upstream in ${DURATION} s, more than the budget's $allowed")
    done < <(rounds "$name")
    stop "$name"
}

RSS_LINES=()
# A fresh gateway (cache.max_bytes $2) fetches RSS_AGENTS distinct agents; reports RSS and cache bytes.
scenario_rss_one() { # NAME CACHE_MAX_BYTES [BINARY]
    local name=$1 max=$2 base_kib after_kib bytes entries body total
    start_gateway "$name" "$RSS_PORT" "$RSS_ADMIN_PORT" "$max" "${3:-$BIN}"
    PORT[$name]=$RSS_PORT
    curl -s -o /dev/null -H "Authorization: Bearer $TEAM_KEY" "http://127.0.0.1:$RSS_PORT/v1/agents2/r000000"
    body=$(curl -s -H "Authorization: Bearer $TEAM_KEY" "http://127.0.0.1:$RSS_PORT/v1/agents2/r000000" | wc -c)
    sleep 0.5
    base_kib=$(rss_kib "${PID[$name]}")
    warm "$name" r "$RSS_AGENTS"
    sleep 1
    bytes=$(gateway_metric dialnexa_gateway_cache_bytes "$RSS_ADMIN_PORT")
    entries=$(gateway_metric dialnexa_gateway_cache_entries "$RSS_ADMIN_PORT")
    after_kib=$(rss_kib "${PID[$name]}")
    total=$((body * RSS_AGENTS))
    RSS_LINES+=("$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$name" "$RSS_AGENTS" "$body" "$total" "$max" \
        "${bytes:-0}" "${entries:-0}" "$base_kib $after_kib")")
    log "$(printf '%s: %s agents of %s B (%s B in all): RSS %s KiB -> %s KiB; cache_bytes %s of max %s; entries %s' \
        "$name" "$RSS_AGENTS" "$body" "$total" "$base_kib" "$after_kib" "$bytes" "$max" "$entries")"
    [ "${bytes:-0}" -le "$max" ] || FAILURES+=("$name: cache_bytes $bytes exceeds cache.max_bytes $max")
    stop "$name"
}

scenario_rss() {
    # Room for every agent: RSS against the bodies' bytes.
    scenario_rss_one gateway-rss $((1024 * 1024 * 1024))
    # The build before, likewise, when there is one.
    [ -z "$BASELINE" ] || scenario_rss_one baseline-rss $((1024 * 1024 * 1024)) "$BASELINE"
    # Less room than the agents need: the byte bound holds.
    scenario_rss_one gateway-bounded $((RSS_AGENTS * 3300 / 4))
}

# === run ===

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "work directory $DIR; proxies on CPU $PROXY_CPU, wrk + upstream on CPU $LOAD_CPU; ${DURATION}s per run, $CONNS connections"
start_upstream
start_gateway gateway "$GATEWAY_PORT" "$GATEWAY_ADMIN_PORT" "$CACHE_MAX_BYTES"
[ -z "$BASELINE" ] || start_gateway baseline "$BASELINE_PORT" "$BASELINE_ADMIN_PORT" "$CACHE_MAX_BYTES" "$BASELINE"
if [ "$CLUSTER" = 1 ]; then
    start_redis
    start_gateway gateway-cluster "$CLUSTER_PORT" "$CLUSTER_ADMIN_PORT" "$CACHE_MAX_BYTES" "$BIN" cluster
    for _ in $(seq 1 50); do
        [ "$(gateway_metric dialnexa_gateway_cluster_up "$CLUSTER_ADMIN_PORT")" = 1 ] && break
        sleep 0.1
    done
    [ "$(gateway_metric dialnexa_gateway_cluster_up "$CLUSTER_ADMIN_PORT")" = 1 ] || die "gateway-cluster does not reach Redis"
fi
start_nginx
start_haproxy
start_ceiling
for proxy in "${PEERS[@]}" ceiling; do sanity "$proxy"; done
[ "$CLUSTER" = 0 ] || sanity gateway-cluster
log "all proxies up and doing the job"

STARTED_AT="$(date -u +%Y-%m-%dT%H:%MZ)"
for s in $SCENARIOS; do
    case $s in
        hit-hot) scenario_hit_hot ;;
        hit-spread) scenario_hit_spread ;;
        miss-0ms) scenario_miss miss-0ms m ;;
        miss-20ms) scenario_miss miss-20ms slow- ;;
        mix) scenario_mix ;;
        rss) scenario_rss ;;
        cluster-hit-hot) scenario_cluster_hit_hot ;;
        cluster-mix) scenario_cluster_mix ;;
        budget-flood) scenario_budget_flood ;;
        *) die "unknown scenario $s" ;;
    esac
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# A hit scenario that went upstream measured the wrong thing.
while IFS=$'\t' read -r scenario proxy _ _ _ _ _ _ _ upr _ _; do
    case $scenario in hit-*|cluster-hit-*)
        awk -v u="$upr" 'BEGIN { exit !(u > 0.01) }' && FAILURES+=("$scenario/$proxy: $upr upstream requests per request: not cache hits") ;;
    esac
done < <(tail -n +2 "$RESULTS")

# === report ===

report() {
    local rss_tsv="$DIR/rss.tsv"
    printf '%s\n' "${RSS_LINES[@]:-}" >"$rss_tsv"
    # Only the cluster scenarios ran: their own table says it all.
    awk -F'\t' 'NR > 1 && $1 !~ /^cluster-/ { found = 1 } END { exit !found }' "$RESULTS" || [ ${#RSS_LINES[@]} -gt 0 ] || return 0
    awk -F'\t' -v rssfile="$rss_tsv" '
    function fmt_us(v) { return v >= 1000 ? sprintf("%.2f ms", v / 1000) : sprintf("%.0f µs", v) }
    function ratio(a, b) { return (b > 0 && a != "") ? sprintf("%.2f", a / b) : "—" }
    # The median of the space-separated numbers in s (mawk has no asort: an insertion sort).
    function median(s,    v, n, i, j, t) {
        n = split(s, v, " ")
        for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return n % 2 ? v[(n + 1) / 2] + 0 : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    NR == 1 || $1 ~ /^cluster-/ { next }
    {
        key = $1 SUBSEP $2
        all_rps[key] = all_rps[key] " " $3; all_p50[key] = all_p50[key] " " $4; all_p99[key] = all_p99[key] " " $5
        all_cpu[key] = all_cpu[key] " " $6; all_usr[key] = all_usr[key] " " $12; all_upr[key] = all_upr[key] " " $10
        all_apr[key] = all_apr[key] " " $11
        err[key] += $8 + $9; runs[key]++
        if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 }
        has[key] = 1
    }
    END {
        for (key in has) {
            rps[key] = median(all_rps[key]); p50[key] = median(all_p50[key]); p99[key] = median(all_p99[key])
            cpu[key] = median(all_cpu[key]); usr[key] = median(all_usr[key]); upr[key] = sprintf("%.3f", median(all_upr[key]))
            apr[key] = all_apr[key] ~ /-/ ? "-" : sprintf("%.3f", median(all_apr[key]))
        }
        print "| scenario | proxy | runs | req/s | p50 | p99 | proxy CPU µs/req | of which user | upstream req/req | audit lines/req | errors + non-2xx |"
        print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        np = split("gateway baseline haproxy nginx ceiling", px, " ")
        for (i = 1; i <= ns; i++) for (j = 1; j <= np; j++) {
            k = order[i] SUBSEP px[j]; if (!(k in has)) continue
            printf "| %s | %s | %d | %.0f | %s | %s | %.1f | %.1f | %s | %s | %d |\n", order[i], px[j], runs[k], rps[k], fmt_us(p50[k]), fmt_us(p99[k]), cpu[k], usr[k], upr[k], apr[k], err[k]
        }
        print ""
        print "Ratios, gateway ÷ peer (req/s: higher is better for the gateway; p50, p99, CPU: lower is better):"
        print ""
        print "| scenario | gateway ÷ | req/s | p50 | p99 | CPU µs/req |"
        print "| --- | --- | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= ns; i++) for (j = 2; j <= np; j++) {
            g = order[i] SUBSEP "gateway"; k = order[i] SUBSEP px[j]
            if (!(k in has) || !(g in has)) continue
            printf "| %s | %s | %s | %s | %s | %s |\n", order[i], px[j], ratio(rps[g], rps[k]), ratio(p50[g], p50[k]), ratio(p99[g], p99[k]), ratio(cpu[g], cpu[k])
        }
        print ""
        print "Targets (issue 7), in this run:"
        print ""
        print "| target | measured | met |"
        print "| --- | ---: | :---: |"
        split("hit-hot hit-spread", hits, " ")
        for (i = 1; i <= 2; i++) {
            s = hits[i]; g = s SUBSEP "gateway"; h = s SUBSEP "haproxy"; n = s SUBSEP "nginx"; c = s SUBSEP "ceiling"
            if (!((g in has) && (h in has))) continue
            target(s ": CPU/request ≤ 0.9× HAProxy", cpu[g] / cpu[h], 0.9, 1)
            if (c in has) target(s ": CPU/request ≤ 1.3× the ceiling", cpu[g] / cpu[c], 1.3, 1)
            target(s ": req/s ≥ 1.0× HAProxy", rps[g] / rps[h], 1.0, 0)
            if (n in has) target(s ": req/s ≥ 1.5× NGINX", rps[g] / rps[n], 1.5, 0)
            best = p99[h]; if ((n in has) && p99[n] < best) best = p99[n]
            target(s ": p99 ≤ the best peer", p99[g] / best, 1.0, 1)
        }
        g = "miss-0ms" SUBSEP "gateway"; h = "miss-0ms" SUBSEP "haproxy"
        if ((g in has) && (h in has)) target("miss-0ms: CPU/request ≤ 1.0× HAProxy", cpu[g] / cpu[h], 1.0, 1)
        while ((getline line < rssfile) > 0) {
            split(line, r, "\t"); if (r[1] != "gateway-rss") continue
            split(r[8], kib, " ")
            target(sprintf("rss: RSS with %d cached agents ≤ 1.3× their body bytes", r[2]), kib[2] * 1024 / r[4], 1.3, 1)
        }
    }
    function target(name, v, limit, lower) {
        ok = lower ? (v <= limit) : (v >= limit)
        printf "| %s | %.2f× | %s |\n", name, v, ok ? "yes" : "**no**"
    }' "$RESULTS"
    if [ ${#RSS_LINES[@]} -gt 0 ]; then
        echo
        echo "Memory: a fresh gateway fetches N distinct agents (\`GET /v1/agents2/rNNNNNN\`, all cached), then RSS (VmRSS) and the admin \`/metrics\` cache figures are read:"
        echo
        echo "| instance | agents | body bytes each | body bytes in all | cache.max_bytes | dialnexa_gateway_cache_bytes | cache entries | RSS at start | RSS after | RSS ÷ body bytes | RSS growth per agent |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        local line
        for line in "${RSS_LINES[@]}"; do
            awk -F'\t' '{ split($8, k, " ");
                printf "| %s | %d | %d | %.1f MiB | %.1f MiB | %.1f MiB | %d | %.1f MiB | %.1f MiB | %.2f | %.0f B |\n",
                    $1, $2, $3, $4 / 1048576, $5 / 1048576, $6 / 1048576, $7, k[1] / 1024, k[2] / 1024, k[2] * 1024 / $4, (k[2] - k[1]) * 1024 / $2 }' <<<"$line"
        done
        printf '%s\n' "${RSS_LINES[@]}" | awk -F'\t' '{ split($8, k, " "); g[$1] = (k[2] - k[1]) * 1024 / $2 }
            END { if (("gateway-rss" in g) && ("baseline-rss" in g) && g["baseline-rss"] > 0)
                printf "\nRSS growth per cached agent, gateway ÷ baseline: %.0f B ÷ %.0f B = %.3f\n", g["gateway-rss"], g["baseline-rss"], g["gateway-rss"] / g["baseline-rss"] }'
    fi
}

# The cluster scenarios: both gateways with Redis's figures, the ratios and issue 15's targets.
report_cluster() {
    grep -q '^cluster-' "$RESULTS" || return 0
    echo
    echo "Cluster mode: the same gateway binary and config alone (\`gateway\`) and with a \`[cluster]\` section against a local redis-server (\`gateway-cluster\`), in one rotation. Redis CPU is redis-server's utime+stime over the run per request; Redis commands are \`INFO commandstats\` call deltas (INFO itself left out) per request; round trips are the gateway's own count of Redis calls (\`dialnexa_gateway_cluster_redis_duration_seconds_count\`). Under \`gateway\`, the Redis columns show Redis idle (the cluster gateway's 1 s health PING)."
    echo
    awk -F'\t' '
    function fmt_us(v) { return v >= 1000 ? sprintf("%.2f ms", v / 1000) : sprintf("%.0f µs", v) }
    function ratio(a, b) { return (b > 0 && a != "") ? sprintf("%.2f", a / b) : "—" }
    function median(s,    v, n, i, j, t) {
        n = split(s, v, " ")
        for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return n % 2 ? v[(n + 1) / 2] + 0 : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    NR == 1 || $1 !~ /^cluster-/ { next }
    {
        key = $1 SUBSEP $2
        all_rps[key] = all_rps[key] " " $3; all_p50[key] = all_p50[key] " " $4; all_p99[key] = all_p99[key] " " $5
        all_cpu[key] = all_cpu[key] " " $6; all_upr[key] = all_upr[key] " " $10; all_usr[key] = all_usr[key] " " $12
        all_rcpu[key] = all_rcpu[key] " " $14; all_rcalls[key] = all_rcalls[key] " " $15
        all_reval[key] = all_reval[key] " " $16; all_rtrips[key] = all_rtrips[key] " " $17
        err[key] += $8 + $9; runs[key]++
        if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 }
        has[key] = 1
    }
    END {
        for (key in has) {
            rps[key] = median(all_rps[key]); p50[key] = median(all_p50[key]); p99[key] = median(all_p99[key])
            cpu[key] = median(all_cpu[key]); upr[key] = median(all_upr[key]); usr[key] = median(all_usr[key])
            rcpu[key] = median(all_rcpu[key]); rcalls[key] = median(all_rcalls[key])
            reval[key] = median(all_reval[key]); rtrips[key] = median(all_rtrips[key])
        }
        print "| scenario | proxy | runs | req/s | p50 | p99 | gateway CPU µs/req | of which user | Redis CPU µs/req | gateway + Redis CPU µs/req | Redis commands/req | EVALSHA/req | Redis round trips/req (gateway) | upstream req/req | errors + non-2xx |"
        print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        np = split("gateway gateway-cluster", px, " ")
        for (i = 1; i <= ns; i++) for (j = 1; j <= np; j++) {
            k = order[i] SUBSEP px[j]; if (!(k in has)) continue
            printf "| %s | %s | %d | %.0f | %s | %s | %.1f | %.1f | %.2f | %.1f | %.3f | %.3f | %.3f | %.3f | %d |\n", order[i], px[j], runs[k], rps[k], fmt_us(p50[k]), fmt_us(p99[k]), cpu[k], usr[k], rcpu[k], cpu[k] + rcpu[k], rcalls[k], reval[k], rtrips[k], upr[k], err[k]
        }
        print ""
        print "Ratios, gateway-cluster ÷ gateway (req/s: higher is better for cluster mode; p50, p99, CPU: lower is better):"
        print ""
        print "| scenario | req/s | p50 | p99 | gateway CPU µs/req | of which user | gateway + Redis CPU µs/req |"
        print "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= ns; i++) {
            g = order[i] SUBSEP "gateway"; c = order[i] SUBSEP "gateway-cluster"
            if (!(c in has) || !(g in has)) continue
            printf "| %s | %s | %s | %s | %s | %s | %s |\n", order[i], ratio(rps[c], rps[g]), ratio(p50[c], p50[g]), ratio(p99[c], p99[g]), ratio(cpu[c], cpu[g]), ratio(usr[c], usr[g]), ratio(cpu[c] + rcpu[c], cpu[g] + rcpu[g])
        }
        g = "cluster-hit-hot" SUBSEP "gateway"; c = "cluster-hit-hot" SUBSEP "gateway-cluster"
        if (!((g in has) && (c in has))) exit
        print ""
        print "Targets (issue 15), in this run (reported, not asserted):"
        print ""
        print "| target | measured | met |"
        print "| --- | ---: | :---: |"
        v = reval[c]; printf "| cluster-hit-hot: 1.0 Redis round trip per hit (EVALSHA/req; 1 ± 0.05) | %.3f | %s |\n", v, (v >= 0.95 && v <= 1.05) ? "yes" : "**no**"
        v = rtrips[c]; printf "| cluster-hit-hot: 1.0 Redis round trip per hit (Redis calls counted by the gateway; 1 ± 0.05) | %.3f | %s |\n", v, (v >= 0.95 && v <= 1.05) ? "yes" : "**no**"
        target("cluster-hit-hot: gateway CPU/request ≤ 1.5× single-node", cpu[c] / cpu[g], 1.5, 1)
        target("cluster-hit-hot: p99 ≤ 2× single-node", p99[c] / p99[g], 2.0, 1)
    }
    function target(name, v, limit, lower) {
        ok = lower ? (v <= limit) : (v >= limit)
        printf "| %s | %.2f× | %s |\n", name, v, ok ? "yes" : "**no**"
    }' "$RESULTS"
    if [ -s "$DIR/redis-kinds.tsv" ]; then
        echo
        echo "Redis commands per request by kind, gateway-cluster, each round (the commands a script runs inside Redis count beside the EVALSHA that ran it, so \`Redis commands/req\` is not round trips):"
        echo
        awk -F'\t' '{ printf "- %s, round %s: %s\n", $1, $2, $3 }' "$DIR/redis-kinds.tsv"
    fi
}

machine() {
    echo "- Date: $STARTED_AT (UTC); load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
    echo "- Command: \`bench/run.sh${ARGS_TEXT:+ $ARGS_TEXT}\` ($ROUNDS rounds of ${DURATION} s runs per scenario and proxy, proxies in rotation; figures are medians over the rounds; wrk -t$WRK_THREADS -c$CONNS, upstream delay for miss-20ms: $SLOW_MS ms)"
    echo "- Gateway: $("$BIN" --version) at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes'), $(rustc --version 2>/dev/null | cut -d' ' -f1-2)"
    if [ -n "$BASELINE" ]; then echo "- Baseline (proxy \`baseline\`, same config): $BASELINE, $("$BASELINE" --version)"; fi
    echo "- Peers: $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }'), $(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')"
    echo "- CPU: $(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), $(nproc) CPUs; kernel $(uname -r); $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- Pinning: every proxy on CPU $PROXY_CPU (gateway \`server.worker_threads = 1\`, NGINX \`worker_processes 1\`, HAProxy \`nbthread 1\`); wrk and the fake upstream on CPU $LOAD_CPU"
    if [ "$CLUSTER" = 1 ]; then echo "- Cluster scenarios: $(redis-server --version | awk '{ print $1, $3 }' | sed 's/v=//') (no persistence) pinned to CPU $REDIS_CPU$([ "$REDIS_CPU" = "$LOAD_CPU" ] && echo ', sharing it with wrk and the fake upstream'); gateway-cluster on CPU $PROXY_CPU with \`[cluster] timeout_ms = 1000, on_unavailable = \"refuse\"\`"; fi
    echo "- **The gateway's audit log was ON** (file sink, one JSON line per request; the \`audit lines/req\` column counts them from \`dialnexa_gateway_audit_lines_written_total\`). NGINX and HAProxy ran without access logs."
}

# The org budget under a flood: calls upstream against the budget, and what each team got.
report_budget() {
    [ ${#BUDGET_LINES[@]} -gt 0 ] || return 0
    echo
    echo "The org budget under a flood (\`budget-flood\`): one org, \`upstream_rate_limit = { per_minute = $BUDGET_PER_MINUTE, burst = $BUDGET_BURST }\`, three teams of \`upstream_share = 1\` (each guaranteed $((BUDGET_PER_MINUTE / 3)) a minute). Team \`bench\` floods cache misses with wrk (-c$CONNS); team \`steady\` sends 4 misses a second, within its part; team \`idle\` sends nothing. Upstream calls are the fake upstream's own count; per team, \`dialnexa_gateway_upstream_calls_total\` and \`org_budget_refused_total\`, per second of the ${DURATION} s run."
    echo
    echo "| round | budget calls/s | upstream calls/s | burst | flood team calls/s | flood team refused/s | steady team calls/s | steady team refused | idle team calls/s |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${BUDGET_LINES[@]}" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
}

REPORT="$DIR/report.md"
{
    echo "### $LABEL"
    echo
    if [ "$SMOKE" = 1 ]; then
        echo "Smoke mode: two rounds of 1 s runs and small data sets check that the benchmark works; its figures mean nothing."
        echo
    fi
    machine
    echo
    report
    report_cluster
    report_budget
} >"$REPORT"
echo
cat "$REPORT"

if [ -n "$DOCS" ] && [ ${#FAILURES[@]} -eq 0 ]; then
    mkdir -p "$(dirname "$DOCS")"
    [ -f "$DOCS" ] || printf '# Benchmarks\n\nWritten by bench/run.sh.\n' >"$DOCS"
    begin="<!-- bench:begin $LABEL -->" end="<!-- bench:end $LABEL -->"
    if grep -qF "$begin" "$DOCS"; then
        awk -v b="$begin" -v e="$end" -v f="$REPORT" '
            $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
            $0 == e { skip = 0 }
            !skip' "$DOCS" >"$DOCS.tmp"
        mv "$DOCS.tmp" "$DOCS"
    else
        { echo; echo "$begin"; cat "$REPORT"; echo "$end"; } >>"$DOCS"
    fi
    log "figures written to $DOCS (section \"$LABEL\")"
fi

if [ ${#FAILURES[@]} -gt 0 ]; then
    log "FAILED:"
    printf '  - %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
log "done: every proxy up, every run without errors or non-2xx answers"
