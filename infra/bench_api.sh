#!/usr/bin/env bash
# Why this exists: the API's two performance targets (issue 6) are
# measured against the real release binary, a real Redis and, for the live
# stream, real aggregator traffic, from second processes on this machine.
# This script reproduces BENCHMARKS.md "API (issue 6)":
#
#   infra/bench_api.sh reads  [SECS]          counter reads with wrk, fresh_cache_ms 0 and 250
#   infra/bench_api.sh streams [N] [SECS]     N live streams (default 50000) under 100M/day traffic
#
# It builds `notiflow` and the `sse_load` bench in release first (cached in
# the build cache like every other build) and starts the local servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib.sh source-path=SCRIPTDIR
source infra/lib.sh
use_build_cache

what=${1:-reads}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
set -a
# shellcheck disable=SC1090
source <(infra/up.sh)
set +a
use_build_cache

log "release build of notiflow and the sse_load bench"
cargo build --release --workspace --locked "${CARGO_FEATURE_ARGS[@]}" --bin notiflow --bench sse_load >&2
bin=$CARGO_TARGET_DIR/release/notiflow
sse=$(find "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -type f -executable -name 'sse_load-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)

key=bench-admin-key
hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
prefix=bench$$
port=18080
mport=19464
config() { # config FRESH_CACHE_MS
  cat >"$work/notiflow.toml" <<TOML
[redis]
url = "$REDIS_URL"
key_prefix = "$prefix"
[kafka]
brokers = "$KAFKA_BROKERS"
topic = "bench.api.$$"
dlq_topic = "bench.api.$$.dlq"
[aggregator]
group_id = "bench-api-$$"
[api]
listen = "127.0.0.1:$port"
fresh_cache_ms = $1
max_streams = 100000
# One key drives every stream of the bench.
max_streams_per_key = 100000
max_connections = 110000
[[api.keys]]
name = "bench"
sha256 = "$hash"
role = "admin"
[lake]
warehouse = "$work/warehouse"
catalog_uri = "sqlite://$work/catalog.db"
[metrics]
listen = "127.0.0.1:$mport"
TOML
}

start_api() {
  (ulimit -n "$(ulimit -Hn)"; exec "$bin" --config "$work/notiflow.toml" run api >"$work/api.log" 2>&1) &
  api_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0; sleep 0.1; done
  die "the API did not start: $(cat "$work/api.log")"
}

# p99 of the in-server latency histogram of one route, from /metrics.
server_p99() {
  curl -s "http://127.0.0.1:$mport/metrics" | python3 -c '
import sys, re
route = sys.argv[1]
b = []
for line in sys.stdin:
    m = re.match(r"notiflow_api_request_seconds_bucket\{le=\"([^\"]+)\",route=\"" + re.escape(route) + r"\"\} (\d+)", line) or \
        re.match(r"notiflow_api_request_seconds_bucket\{route=\"" + re.escape(route) + r"\",le=\"([^\"]+)\"\} (\d+)", line)
    if m: b.append((float(m.group(1)), int(m.group(2))))
b.sort(); total = b[-1][1]
for le, n in b:
    if n >= 0.99 * total:
        print(f"in-server p99 <= {le*1000:g} ms ({total} requests)"); break
' "$1"
}

case $what in
reads)
  secs=${2:-20}
  # One busy client's last 60 minutes: every minute holds all 9 counters.
  now=$(date -u +%s)
  for m in $(seq 0 61); do
    t=$((now - m * 60))
    hour=$(date -u -d "@$t" +%Y%m%d%H)
    mm=$(date -u -d "@$t" +%M)
    for slot in accepted sent delivered read failed sent.marketing sent.utility sent.authentication sent.service; do
      echo "HINCRBY $prefix:m:{client-00000}:$hour $mm:$slot $((RANDOM % 5000 + 1))"
    done
  done | redis-cli -u "$REDIS_URL" >/dev/null
  redis-cli -u "$REDIS_URL" SADD "$prefix:clients" client-00000 >/dev/null
  for cache in 0 250; do
    config "$cache"
    start_api
    url="http://127.0.0.1:$port/v1/clients/client-00000/series"
    curl -sf -H "Authorization: Bearer $key" "$url" | head -c 200 >&2; echo >&2
    log "fresh_cache_ms=$cache: wrk -t1 -c64 -d${secs}s (warm-up 5 s first)"
    wrk -t1 -c64 -d5s -H "Authorization: Bearer $key" "$url" >/dev/null
    wrk -t1 -c64 -d"${secs}s" --latency -H "Authorization: Bearer $key" "$url"
    server_p99 "/v1/clients/{client}/series"
    echo "server RSS: $(awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$api_pid/status")"
    kill "$api_pid"; wait "$api_pid" 2>/dev/null || true
  done
  ;;
streams)
  n=${2:-50000}
  secs=${3:-60}
  config 250
  "$bin" --config "$work/notiflow.toml" topics >&2
  "$bin" --config "$work/notiflow.toml" run aggregator >"$work/agg.log" 2>&1 &
  "$bin" --config "$work/notiflow.toml" gen --rate 100M/day >"$work/gen.log" 2>&1 &
  start_api
  sleep 10
  log "$n streams for ${secs}s"
  (ulimit -n "$(ulimit -Hn)"; "$sse" "127.0.0.1:$port" "$n" "$key" 2500 4 "$secs" "$api_pid")
  echo "API metrics:"
  curl -s "http://127.0.0.1:$mport/metrics" | grep -E '^notiflow_api_(streams|deltas_total|streams_dropped_total|delta_lag_seconds_(sum|count))'
  ;;
*) die "usage: infra/bench_api.sh reads [SECS] | streams [N] [SECS]" ;;
esac
