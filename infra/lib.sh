# shellcheck shell=bash disable=SC2034
# Shared settings and helpers of the infra/ scripts (sourced, not run).
# Both scripts must agree on where state lives and how a recorded pid is
# recognised as still being "ours", so that lives here once.

NOTIFLOW_HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-9092}
REDIS_PORT=${REDIS_PORT:-6379}
S3_PORT=${S3_PORT:-9000}
STATE_DIR=${NOTIFLOW_STATE_DIR:-${NOTIFLOW_CACHE_DIR:-$HOME/.cache/notiflow}/run}
WAIT_SECS=${NOTIFLOW_WAIT_SECS:-60}

INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_NAME=$(basename "$0" .sh)

log() { printf '[infra/%s %(%H:%M:%S)T] %s\n' "$SCRIPT_NAME" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_file() { echo "$STATE_DIR/$1.pid"; }
port_file() { echo "$STATE_DIR/$1.port"; }
log_file() { echo "$STATE_DIR/$1.log"; }

# What a service's /proc/PID/cmdline must contain for a recorded pid to count
# as ours (guards against a stale pid file whose pid was reused).
cmd_pattern() {
  case "$1" in
    tansu) echo "tansu broker" ;;
    moto) echo "moto.server" ;;
    redis) echo "redis-server" ;;
    *) die "unknown service $1" ;;
  esac
}

# Prints the recorded pid of service $1 when that process is alive and is
# really that service; prints nothing otherwise.
live_pid() {
  local f pid cmd
  f=$(pid_file "$1")
  [[ -s $f ]] || return 0
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 0
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmd == *"$(cmd_pattern "$1")"* ]] && echo "$pid"
  return 0
}

# True while the process whose pid up.sh recorded for $1 exists.
started_pid_alive() {
  local f pid
  f=$(pid_file "$1")
  [[ -s $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid && -d /proc/$pid ]]
}

# True when something accepts TCP connections on loopback port $1.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$NOTIFLOW_HOST/$1" 2>/dev/null
}

# Where notiflow keeps what it installs and builds, outside any clone, so
# the demo, the tests and CI reuse one copy.
CACHE_DIR=${NOTIFLOW_CACHE_DIR:-$HOME/.cache/notiflow}
# The Python tools of the test suite live in a virtual environment notiflow
# owns (Debian's python3 refuses `pip install` into itself, PEP 668).
VENV_DIR=${NOTIFLOW_VENV_DIR:-$CACHE_DIR/venv}
# Every step's wall time, one line each (date, step, seconds, exit code).
TIMINGS_FILE=${NOTIFLOW_TIMINGS_FILE:-$CACHE_DIR/timings.log}

# How long the slow first-run steps took on a fresh 2-core machine
# (BENCHMARKS.md "First run on a new machine"); said before each starts.
EST_NOTIFLOW_BUILD="about 22 min on a new 2-core machine alongside tansu's build (librdkafka, DataFusion, arrow), a minute or two once cached"
EST_TANSU_BUILD="about 14 min on a new 2-core machine alongside notiflow's build, once; cached afterwards"
EST_CLIPPY="about 2.5 min the first time (every dependency checked once; no C compiled again), seconds once cached"
EST_VENV="about 1 min (downloads from PyPI the first time)"

# DuckDB (SPEC §7): notiflow links DuckDB's official prebuilt libduckdb.so,
# the one DuckDB's own Node.js bindings ship in the npm registry, instead of
# compiling its C++ (10+ min on 2 cores, a 730 MB debug binary). up.sh
# fetches it with npm, checks the package's and the library's digests and
# keeps it here; where it cannot be had, the build compiles DuckDB instead
# (feature notiflow-reports/duckdb-bundled), said on one line.
DUCKDB_VERSION=1.5.6
DUCKDB_NPM_PACKAGE=@duckdb/node-bindings-linux-x64@1.5.6-r.1
# The npm tarball's integrity (sha512-IXcrZJE6…mN1Q==) in hex, and the library's sha256.
DUCKDB_TGZ_SHA512=21772b64913a904a8cd19e30c1d5671811d7fdface4b7dd53cd0300d743f43e16cf386f4e7c41ef78721ac208870d2651bc6375072145387817824315b998dd5
DUCKDB_LIB_SHA256=3f4962cdd266eab2b479a5b5a4a6d063d279b2954ae814ed00385d553b747633
DUCKDB_DIR=${NOTIFLOW_DUCKDB_DIR:-$CACHE_DIR/duckdb/$DUCKDB_VERSION}

# True when the verified prebuilt library is in the cache (up.sh writes the
# marker only after both digests matched) and the bundled build is not asked
# for (NOTIFLOW_DUCKDB=bundled).
duckdb_prebuilt() {
  [[ ${NOTIFLOW_DUCKDB:-} != bundled && -f $DUCKDB_DIR/libduckdb.so &&
    $(cat "$DUCKDB_DIR/.verified" 2>/dev/null) == "$DUCKDB_LIB_SHA256" ]]
}

# The Rust toolchain and the build cache outside the clone, shared by every
# run (tests, demo, CI) so only notiflow's own crates rebuild; and how this
# machine gets DuckDB: the prebuilt library (found at build time through
# DUCKDB_LIB_DIR, at run time through LD_LIBRARY_PATH and the binaries'
# rpath) or, failing that, the bundled build's cargo features in
# CARGO_FEATURE_ARGS (every cargo command of the scripts passes them, so the
# demo, clippy and the tests share one build).
CARGO_FEATURE_ARGS=()
use_build_cache() {
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE_DIR/target}
  command -v cargo >/dev/null || export PATH=$HOME/.cargo/bin:$PATH
  if duckdb_prebuilt; then
    export DUCKDB_LIB_DIR=$DUCKDB_DIR
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$DUCKDB_DIR:"*) ;;
      *) export LD_LIBRARY_PATH=$DUCKDB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;;
    esac
    CARGO_FEATURE_ARGS=()
  else
    unset DUCKDB_LIB_DIR
    CARGO_FEATURE_ARGS=(--features notiflow-reports/duckdb-bundled)
  fi
}

# The test tools' virtual environment first on PATH: `python3`, `hadolint`,
# `schemathesis` and friends are then notiflow's own copies.
use_venv() {
  export PATH=$VENV_DIR/bin:$PATH PYTHON=$VENV_DIR/bin/python
}

# run_step LABEL ESTIMATE CMD...: says what is about to happen and about how
# long it takes, prints a heartbeat every minute while CMD runs (with the
# number of crates cargo compiled so far), then its wall time, also appended
# to $TIMINGS_FILE. CMD's output goes to stderr. Returns CMD's status.
run_step() {
  local label=$1 estimate=$2 start=$SECONDS rc=0 beat out
  shift 2
  mkdir -p "$(dirname "$TIMINGS_FILE")"
  out=$(mktemp)
  log "$label: $estimate"
  (
    while sleep 60; do
      log "… $label: $(((SECONDS - start) / 60)) min so far, $(grep -c '^ *Compiling ' "$out" || true) crates compiled"
    done
  ) &
  beat=$!
  "$@" 2> >(tee -a "$out" >&2) >&2 || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  rm -f "$out"
  printf '%(%FT%T)T\t%s\t%d\t%d\n' -1 "$label" $((SECONDS - start)) "$rc" >>"$TIMINGS_FILE"
  if ((rc == 0)); then
    log "$label: done in $(elapsed $((SECONDS - start)))"
  else
    log "$label: FAILED (exit $rc) after $(elapsed $((SECONDS - start)))"
  fi
  return "$rc"
}

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# build_in_background PROFILE: installs what the build needs (up.sh
# --build-deps: seconds), then starts build_notiflow in the background,
# its pid in BUILD_PID, so it overlaps the rest of up.sh (tansu's build
# above all: two builds on two cores finish sooner together than one after
# the other). wait_build waits for it and stops the script if it failed.
BUILD_PID=
build_in_background() {
  infra/up.sh --for "$1" --build-deps
  build_notiflow &
  BUILD_PID=$!
}
wait_build() {
  [[ -n $BUILD_PID ]] || return 0
  local pid=$BUILD_PID
  BUILD_PID=
  wait "$pid" || die "building notiflow failed (its output is above)"
  use_build_cache
}
stop_build() {
  [[ -n $BUILD_PID ]] || return 0
  # The build's own children (cargo, its heartbeat) first: killing only the
  # background shell would leave cargo building, holding the target dir.
  pkill -TERM -P "$BUILD_PID" 2>/dev/null || true
  kill "$BUILD_PID" 2>/dev/null || true
}

# The build of every notiflow binary and test binary: the demo and the
# tests run the same command, so whichever runs first builds for both.
build_notiflow() {
  use_build_cache
  run_step "building notiflow (cargo test --workspace --no-run)" "$EST_NOTIFLOW_BUILD" \
    cargo test --locked --workspace "${CARGO_FEATURE_ARGS[@]}" --no-run
}
