#!/usr/bin/env bash
# Why this exists: BENCHMARKS.md's "Demo" figures come from here. It runs
# the README's first command (infra/demo.sh) as a user does, on a fresh
# topic, key prefix and lake, for SECONDS, and prints what a new user and an
# operator would ask of it: how soon the API has live counts, the rate it
# sustained, the process's CPU and memory, the freshness of the counters
# (event to Redis, from the aggregator's histogram), consumer lag, and how
# long Ctrl-C takes to stop everything.
#
# Usage: infra/bench_demo.sh SECONDS [--rate 100M/day]
# Environment: NOTIFLOW_BIN (default: the debug build infra/demo.sh makes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh
use_build_cache

secs=${1:?usage: infra/bench_demo.sh SECONDS [--rate R]}
shift
export NOTIFLOW_BIN=${NOTIFLOW_BIN:-$CARGO_TARGET_DIR/debug/notiflow}
[[ -x $NOTIFLOW_BIN ]] || die "no $NOTIFLOW_BIN: build first (cargo test --workspace --no-run)"

work=$(mktemp -d)
tag=bench.demo.$$.$(date +%s)
api=127.0.0.1:18080
prom=127.0.0.1:19464
export NOTIFLOW__KAFKA__TOPIC=$tag NOTIFLOW__KAFKA__DLQ_TOPIC=$tag.dlq
export NOTIFLOW__REDIS__KEY_PREFIX=${tag//./_}
export NOTIFLOW__LAKE__WAREHOUSE=$work/warehouse NOTIFLOW__LAKE__CATALOG_URI=sqlite://$work/catalog.db
export NOTIFLOW__REPORTS__OUTPUT=$work/reports
export NOTIFLOW__API__LISTEN=$api NOTIFLOW__METRICS__LISTEN=$prom

setsid infra/demo.sh --keep-servers "$@" >"$work/out" 2>"$work/err" &
script=$!
trap 'kill -TERM $script 2>/dev/null || true; rm -rf "$work"' EXIT
t0=$(date +%s.%N)

key=
until [[ -n $key ]]; do
  sleep 0.2
  [[ -d /proc/$script ]] || die "demo exited: $(tail -5 "$work/err")"
  key=$(sed -n 's/^demo API key[^:]*: //p' "$work/out")
done
pid=$(pgrep -P "$script" -f 'notiflow demo') || die "no notiflow demo process"
until curl -fsS -H "Authorization: Bearer $key" "http://$api/v1/top?limit=1" | grep -q '"events":[1-9]'; do
  [[ -d /proc/$pid ]] || die "demo exited: $(tail -5 "$work/err")"
  sleep 0.2
done
live=$(echo "$(date +%s.%N) - $t0" | bc)
log "live counts in the API after ${live}s; measuring for ${secs}s"

ticks=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/${1:-$pid}/stat"; }
broker=$(live_pid tansu || true)
counted() { curl -fsS "http://$prom/metrics" | awk '$1 == "notiflow_ingest_records_total" { print $2 }'; }
b0=$( [[ -n $broker ]] && cpu "$broker" || echo 0) c0=$(cpu) r0=$(counted) s0=$(date +%s.%N) peak=0
end=$(($(date +%s) + secs))
while (($(date +%s) < end)); do
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
  ((rss > peak)) && peak=$rss
  sleep 1
done
b1=$( [[ -n $broker ]] && cpu "$broker" || echo 0) c1=$(cpu) r1=$(counted) s1=$(date +%s.%N)
metrics=$(curl -fsS "http://$prom/metrics")

# p50/p99 of a Prometheus histogram: the upper bound of the first bucket
# holding that share of the count.
quantile() {
  awk -v name="$1_bucket" -v q="$2" '
    index($0, name "{") == 1 { split($0, a, "le=\""); split(a[2], b, "\""); le[n] = b[1]; c[n++] = $NF }
    END {
      if (n == 0 || c[n - 1] == 0) { print "n/a "; exit }
      for (i = 0; i < n; i++) if (c[i] >= q * c[n - 1]) { print le[i]; exit }
    }' <<<"$metrics"
}
lag=$(awk -F'[_{ ]' '/^notiflow_(aggregator|lake|ingest)_consumer_lag\{/ { if ($NF > m[$2]) m[$2] = $NF }
  END { for (c in m) printf "%s %d, ", c, m[c] }' <<<"$metrics")
elapsed=$(echo "$s1 - $s0" | bc)

t_int=$(date +%s.%N)
kill -INT "$pid"
wait "$script" && status=0 || status=$?
stop=$(echo "$(date +%s.%N) - $t_int" | bc)
left=$(pgrep -g "$script" | wc -l || true)

printf 'rate option           %s\n' "${*:-default (100M/day)}"
printf 'live counts after     %.1f s (start of infra/demo.sh to the first non-zero /v1/top)\n' "$live"
printf 'records consumed      %.0f/s over %.0f s\n' "$(echo "($r1 - $r0) / $elapsed" | bc -l)" "$elapsed"
printf 'CPU (all components)  %.0f%% of one core\n' "$(echo "100 * ($c1 - $c0) / $ticks / $elapsed" | bc -l)"
[[ -n $broker ]] && printf 'CPU (local broker)    %.0f%% of one core (tansu)\n' "$(echo "100 * ($b1 - $b0) / $ticks / $elapsed" | bc -l)"
printf 'RSS peak              %d MiB\n' $((peak / 1024))
printf 'event to Redis        p50 <= %ss, p99 <= %ss (histogram bucket bounds)\n' \
  "$(quantile notiflow_aggregator_event_to_redis_seconds 0.5)" "$(quantile notiflow_aggregator_event_to_redis_seconds 0.99)"
printf 'Redis apply           p99 <= %ss; lake commit p99 <= %ss\n' \
  "$(quantile notiflow_aggregator_batch_apply_seconds 0.99)" "$(quantile notiflow_lake_commit_seconds 0.99)"
printf 'largest consumer lag  %s(records, largest partition, at the end)\n' "$lag"
printf 'Ctrl-C to exit        %.1f s, exit status %d, %d processes left in its group\n' "$stop" "$status" "$left"
grep '^demo stopped' "$work/out" || true
