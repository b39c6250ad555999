#!/usr/bin/env bash
# The README's first command. On a fresh machine it installs and starts
# what the demo needs and nothing more (infra/up.sh --for demo: the build
# tools, DuckDB's prebuilt library, the tansu broker, Redis; it lists them
# first), builds notiflow (the same build infra/test.sh uses, while up.sh
# builds the broker), then runs
# `notiflow demo`: generator, ingest, aggregator, lake writer, report
# scheduler and API with the dashboard, with embedded defaults (local
# folder lake, SQLite catalog), until Ctrl-C. It prints the dashboard URL
# and a demo API key.
#
# Ctrl-C (or SIGTERM to this script) stops notiflow cleanly and then stops
# the servers that this run started; servers that were already running are
# left as they were. --keep-servers keeps them all.
#
# Usage: infra/demo.sh [--keep-servers] [--rate 100M/day|1160/s|...]
# Environment: NOTIFLOW_BIN runs that binary instead of building one (the
# tests do); NOTIFLOW__SECTION__FIELD variables configure notiflow.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh

keep=0
args=()
for a in "$@"; do
  if [[ $a == --keep-servers ]]; then keep=1; else args+=("$a"); fi
done

SERVICES=(tansu redis)
declare -A before
for s in "${SERVICES[@]}"; do before[$s]=$(live_pid "$s"); done

use_build_cache
bin=${NOTIFLOW_BIN:-}
if [[ -z $bin ]]; then
  # The same command and features as infra/test.sh's build, so the demo and
  # the tests share one build of the dependencies (DataFusion, librdkafka);
  # it runs while up.sh installs the broker.
  build_in_background demo
  trap stop_build EXIT
fi
# Captured first: a failing up.sh must stop the demo here.
env_lines=$(infra/up.sh --for demo)
set -a
# shellcheck disable=SC1090
source <(printf '%s\n' "$env_lines")
set +a
started=()
for s in "${SERVICES[@]}"; do
  now=$(live_pid "$s")
  [[ -n $now && $now != "${before[$s]}" ]] && started+=("$s")
done

# shellcheck disable=SC2317  # called by the EXIT trap
stop_started() {
  stop_build
  if ((keep == 0 && ${#started[@]})); then
    log "stopping the servers this demo started: ${started[*]}"
    infra/down.sh "${started[@]}" || true
  fi
}
trap stop_started EXIT

# The demo's state lives as long as the broker's log it points into: on
# our broker, its Redis keys and lake are those of the log's identity
# (up.sh makes a new one with a new log), unless the caller chose them. A
# second run on the same log goes on where the first stopped; a new log
# starts with new state instead of offsets into a log that is gone.
if [[ -z ${NOTIFLOW__KAFKA__BROKERS:-} && -n $(live_pid tansu) && -s $STATE_DIR/tansu/log-id ]]; then
  log_id=$(<"$STATE_DIR/tansu/log-id")
  export NOTIFLOW__REDIS__KEY_PREFIX=${NOTIFLOW__REDIS__KEY_PREFIX:-nf-$log_id}
  export NOTIFLOW__LAKE__WAREHOUSE=${NOTIFLOW__LAKE__WAREHOUSE:-data/$log_id/warehouse}
  export NOTIFLOW__LAKE__CATALOG_URI=${NOTIFLOW__LAKE__CATALOG_URI:-sqlite://data/$log_id/catalog.db}
  log "the broker's log is $log_id: Redis keys under $NOTIFLOW__REDIS__KEY_PREFIX, lake in $NOTIFLOW__LAKE__WAREHOUSE"
fi

# The servers up.sh reported, unless the caller configured others.
export NOTIFLOW__KAFKA__BROKERS=${NOTIFLOW__KAFKA__BROKERS:-$KAFKA_BROKERS}
export NOTIFLOW__REDIS__URL=${NOTIFLOW__REDIS__URL:-$REDIS_URL}

if [[ -z $bin ]]; then
  wait_build
  bin=$CARGO_TARGET_DIR/debug/notiflow
fi

"$bin" demo "${args[@]}" &
child=$!
# Ctrl-C reaches notiflow directly (same process group); a signal sent to
# this script alone is passed on. Either way, wait for it to finish.
trap 'kill -INT $child 2>/dev/null || true' INT
trap 'kill -TERM $child 2>/dev/null || true' TERM
status=0
while :; do
  wait "$child" && status=0 || status=$?
  # wait returns early (status > 128) when a trapped signal arrives.
  [[ -d /proc/$child ]] || break
done
exit "$status"
