#!/usr/bin/env bash
# Why this exists: notiflow's demo and integration tests need a
# Kafka-protocol broker, Redis and (for the tests) an S3 endpoint on
# loopback, and the machines we develop and run CI on have no Docker
# engine. This script installs whatever is missing and starts, detached,
# only the services that are not already answering. It is idempotent: with
# everything up it changes nothing and exits 0 in about a second.
#
# Usage: infra/up.sh [--for demo|tests] [--plan] [--build-deps]
#   --for demo    what infra/demo.sh needs: the build tools, the broker
#                 (tansu, built from crates.io) and Redis (Debian). Nothing else.
#   --for tests   (the default) also what the test suite needs: the S3 server
#                 (moto) and the Python tools in notiflow's own virtual
#                 environment (infra/requirements-test.txt), Chromium and
#                 its driver, Prometheus, shellcheck.
#   --plan        print the install plan (every item, present or missing, and
#                 why it is needed) and exit: installs and starts nothing.
#   --build-deps  only what building notiflow needs (the build tools and
#                 DuckDB's library), in seconds: demo.sh and test.sh run
#                 it first, then build notiflow while the rest installs
#                 (tansu's build), since each build leaves a core idle
#                 much of the time. Starts nothing, prints no env lines.
# The plan is printed on every run, so what it installs is always listed.
#
# Stdout is only the env lines tests use (KAFKA_BROKERS=..., REDIS_URL=...,
# S3_ENDPOINT=... for the tests), also written to $STATE_DIR/env; logs go
# to stderr. See infra/README.md.
# shellcheck disable=SC2317  # checks and starters are called through ensure_service
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TANSU_VERSION=0.6.0
TOOLS_DIR=${NOTIFLOW_TOOLS_DIR:-$CACHE_DIR/tools}
TANSU_TARGET_DIR=$CACHE_DIR/tansu-target
TANSU_BIN=${TANSU_BIN:-$TOOLS_DIR/bin/tansu}
TANSU_CLUSTER_ID=notiflow-local
TANSU_BUILD_WAIT_SECS=${TANSU_BUILD_WAIT_SECS:-3600}
TEST_REQUIREMENTS=$INFRA_DIR/requirements-test.txt
# The interpreter the venv is made from: Debian's own, whatever python3 is
# first on PATH (a pyenv or conda python is not what a newcomer has).
BASE_PYTHON=${NOTIFLOW_BASE_PYTHON:-/usr/bin/python3}
PYTHON=$VENV_DIR/bin/python

command -v cargo >/dev/null || PATH=$PATH:$HOME/.cargo/bin
APT_UPDATED=0

profile=tests
plan_only=0
build_deps=0
while (($#)); do
  case $1 in
    --for) profile=${2:-}; shift 2 || shift ;;
    --for=*) profile=${1#--for=}; shift ;;
    --plan) plan_only=1; shift ;;
    --build-deps) build_deps=1; shift ;;
    *) die "unknown argument '$1' (usage: infra/up.sh [--for demo|tests] [--plan] [--build-deps])" ;;
  esac
done
[[ $profile == demo || $profile == tests ]] || die "--for takes 'demo' or 'tests', not '$profile'"

# ---------------------------------------------------------------- installs

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_install() {
  ((${#@})) || return 0
  if ((APT_UPDATED == 0)); then
    run_step "apt-get update" "a few seconds" as_root apt-get update -qq
    APT_UPDATED=1
  fi
  run_step "apt-get install $*" "about a minute (Chromium and Prometheus are the big ones)" \
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  # Debian's prometheus package starts its own service; only the binaries are used.
  if [[ " $* " == *" prometheus "* ]] && command -v service >/dev/null; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
}

requirements_digest() { sha256sum <"$TEST_REQUIREMENTS" | cut -d' ' -f1; }

# True when the venv exists and was made from the current requirements file.
venv_current() {
  [[ -x $PYTHON && -f $VENV_DIR/.requirements.sha256 &&
    $(cat "$VENV_DIR/.requirements.sha256") == "$(requirements_digest)" ]]
}

install_venv() {
  [[ -x $BASE_PYTHON ]] || die "$BASE_PYTHON is missing: install Debian's python3 and python3-venv"
  mkdir -p "$(dirname "$VENV_DIR")"
  # shellcheck disable=SC2016  # $1..$3 are the inner shell's
  run_step "python venv $VENV_DIR (infra/requirements-test.txt)" "$EST_VENV" bash -c '
    set -e
    "$1" -m venv --clear "$2"
    "$2/bin/python" -m pip install -q --disable-pip-version-check -r "$3"' _ \
    "$BASE_PYTHON" "$VENV_DIR" "$TEST_REQUIREMENTS"
  requirements_digest >"$VENV_DIR/.requirements.sha256"
}

# The background install of tansu (cargo install ...) runs as a cargo
# process whose command line starts with cargo's path.
tansu_build_running() { pgrep -f '^[^ ]*cargo install tansu' >/dev/null; }

wait_for_other_tansu_build() {
  local waited=0
  tansu_build_running || return 0
  log "a 'cargo install tansu' is already running; waiting for it (up to ${TANSU_BUILD_WAIT_SECS}s)"
  while tansu_build_running; do
    ((waited < TANSU_BUILD_WAIT_SECS)) || die "gave up waiting for the running tansu build"
    sleep 10
    waited=$((waited + 10))
  done
}

install_tansu() {
  wait_for_other_tansu_build
  [[ -x $TANSU_BIN ]] && return 0
  command -v cargo >/dev/null || die "cargo not found: tansu must be built from crates.io"
  mkdir -p "$TOOLS_DIR" "$TANSU_TARGET_DIR"
  # flock: two up.sh runs at once share one build instead of racing.
  # opt-level 1 instead of release's 3: most of a cold tansu build is LLVM
  # optimising (issue 33; build time and the suite's wall time against it
  # are in BENCHMARKS.md). TANSU_OPT_LEVEL=3 builds it as crates.io ships.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=${TANSU_OPT_LEVEL:-1} CARGO_TARGET_DIR=$TANSU_TARGET_DIR run_step "building tansu $TANSU_VERSION (the local Kafka-protocol broker) into $TOOLS_DIR" \
    "$EST_TANSU_BUILD" flock "$TOOLS_DIR/.install.lock" \
    cargo install "tansu@$TANSU_VERSION" --locked --features libsql --root "$TOOLS_DIR"
  [[ -x $TANSU_BIN ]] || die "cargo install finished but $TANSU_BIN is missing"
}

# Fetches DuckDB's prebuilt library (lib.sh says why) with npm into the
# cache, checks the tarball's sha512 and the library's sha256, and marks it
# verified. Never fatal: without npm, the registry or matching digests it
# says so on one line and the build compiles DuckDB instead.
install_duckdb() {
  local tmp why=
  tmp=$(mktemp -d)
  if ! command -v npm >/dev/null; then
    why="npm is not installed"
  elif ! (cd "$tmp" && timeout 300 npm pack --silent "$DUCKDB_NPM_PACKAGE" >pack.out 2>pack.err); then
    why="npm pack $DUCKDB_NPM_PACKAGE failed: $(tail -n 1 "$tmp/pack.err" 2>/dev/null)"
  elif [[ $(sha512sum "$tmp"/*.tgz | cut -d' ' -f1) != "$DUCKDB_TGZ_SHA512" ]]; then
    why="the npm package's sha512 is not the pinned one"
  elif ! tar -xzf "$tmp"/*.tgz -C "$tmp" package/libduckdb.so; then
    why="the npm package has no package/libduckdb.so"
  elif [[ $(sha256sum "$tmp/package/libduckdb.so" | cut -d' ' -f1) != "$DUCKDB_LIB_SHA256" ]]; then
    why="libduckdb.so's sha256 is not the pinned one"
  else
    mkdir -p "$DUCKDB_DIR"
    rm -f "$DUCKDB_DIR/.verified"
    mv "$tmp/package/libduckdb.so" "$DUCKDB_DIR/libduckdb.so"
    echo "$DUCKDB_LIB_SHA256" >"$DUCKDB_DIR/.verified"
    log "DuckDB: the official prebuilt libduckdb $DUCKDB_VERSION ($DUCKDB_NPM_PACKAGE, digests checked) is in $DUCKDB_DIR"
  fi
  rm -rf "$tmp"
  [[ -z $why ]] || log "DuckDB: prebuilt library not available ($why); notiflow compiles DuckDB's C++ instead (feature notiflow-reports/duckdb-bundled, about 10 min more on 2 cores)"
}

install_nextest() {
  command -v cargo >/dev/null || die "cargo not found: cargo-nextest is built from crates.io"
  mkdir -p "$CACHE_DIR/nextest-target"
  CARGO_TARGET_DIR=$CACHE_DIR/nextest-target run_step "building cargo-nextest into ~/.cargo/bin" \
    "about 5 min on a new 2-core machine, once" cargo install cargo-nextest --locked
}

# ---------------------------------------------------------------- the plan

# One line per item: kind, name, why; built by want().
ITEMS=()
want() { ITEMS+=("$1|$2|$3"); }

# What the profile needs, in install order. Items the demo needs only when
# no server answers yet are marked "if:" with that condition.
collect_plan() {
  local pkg
  for pkg in cmake libcurl4-openssl-dev libssl-dev pkg-config g++; do
    want apt "$pkg" "building notiflow (librdkafka is built from source)"
  done
  want duckdb "libduckdb@$DUCKDB_VERSION" "DuckDB's official prebuilt library from npm (else DuckDB is compiled)"
  ((build_deps == 0)) || return 0
  if [[ $profile == tests ]]; then
    want apt protobuf-compiler "building tansu"
    want tansu "tansu@$TANSU_VERSION" "the Kafka-protocol broker (the tests also start their own)"
    want apt redis-server "Redis"
    want apt python3-venv "the test tools' virtual environment"
    want venv "$VENV_DIR" "test tools from PyPI: $(sed -n 's/^\([A-Za-z][A-Za-z0-9_.-]*\).*/\1/p' "$TEST_REQUIREMENTS" | paste -sd' ')"
    want apt chromium "the dashboard's browser tests"
    want apt chromium-driver "the dashboard's browser tests"
    want apt prometheus "the demo test's real scrape; promtool"
    want apt shellcheck "infra/check_deploy.sh"
    want apt faketime "tests that run a process hours ahead (libfaketime)"
    want nextest cargo-nextest "runs the tests, each bounded in time (.config/nextest.toml)"
  else
    want apt protobuf-compiler "building tansu, if:no-broker"
    want tansu "tansu@$TANSU_VERSION" "the Kafka-protocol broker, if:no-broker"
    want apt redis-server "Redis, if:no-redis"
  fi
}

item_present() {
  case $1 in
    apt) apt_installed "$2" ;;
    tansu) [[ -x $TANSU_BIN ]] ;;
    venv) venv_current ;;
    duckdb) duckdb_prebuilt ;;
    nextest) command -v cargo-nextest >/dev/null ;;
  esac
}

# Prints the plan (to stderr, or stdout with --plan) and fills MISSING_APT
# and the NEED_* flags with what must be installed.
MISSING_APT=()
NEED_TANSU=0
NEED_VENV=0
NEED_DUCKDB=0
NEED_NEXTEST=0
make_plan() {
  local item kind name why state cond broker_up=0 redis_up=0
  kafka_ready && broker_up=1
  redis_ready && redis_up=1
  for item in "${ITEMS[@]}"; do
    IFS='|' read -r kind name why <<<"$item"
    cond=
    [[ $why == *", if:"* ]] && cond=${why##*, if:} && why=${why%, if:*}
    if [[ $cond == no-broker ]] && ((broker_up)); then
      state="not needed (a broker answers on $NOTIFLOW_HOST:$KAFKA_PORT)"
    elif [[ $cond == no-redis ]] && ((redis_up)); then
      state="not needed (Redis answers on $NOTIFLOW_HOST:$REDIS_PORT)"
    elif [[ $kind == duckdb && ${NOTIFLOW_DUCKDB:-} == bundled ]]; then
      state="not wanted (NOTIFLOW_DUCKDB=bundled: DuckDB is compiled)"
    elif item_present "$kind" "$name"; then
      state=present
    else
      state="missing: will install"
      case $kind in
        apt) MISSING_APT+=("$name") ;;
        tansu) NEED_TANSU=1 ;;
        venv) NEED_VENV=1 ;;
        duckdb) NEED_DUCKDB=1 ;;
        nextest) NEED_NEXTEST=1 ;;
      esac
    fi
    printf 'plan(%s): %-7s %-28s %s (%s)\n' "$profile" "$kind" "$name" "$state" "$why"
  done
}

# ---------------------------------------------------------------- readiness

kafka_ready() {
  # A Kafka ApiVersions v0 request (API key 18, correlation id 0x4e46) over
  # bash's /dev/tcp: a Kafka-protocol broker answers with that correlation
  # id and error code 0. No client library or Python needed.
  local reply
  port_open "$KAFKA_PORT" || return 1
  reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/$NOTIFLOW_HOST/$KAFKA_PORT &&
    printf '\x00\x00\x00\x12\x00\x12\x00\x00\x00\x00\x4e\x46\x00\x08notiflow' >&3 &&
    head -c 10 <&3 | od -An -tx1" 2>/dev/null | tr -d ' \n')
  [[ ${reply:8:12} == 00004e460000 ]]
}

redis_ready() {
  # RESP ping over bash's /dev/tcp, so no redis-cli is needed.
  timeout 2 bash -c "exec 3<>/dev/tcp/$NOTIFLOW_HOST/$REDIS_PORT && printf 'PING\r\n' >&3 &&
    IFS= read -r line <&3 && [[ \$line == '+PONG'* ]]" 2>/dev/null
}

s3_ready() {
  # moto answers GET / with an S3 ListAllMyBuckets document.
  timeout 3 bash -c "exec 3<>/dev/tcp/$NOTIFLOW_HOST/$S3_PORT &&
    printf 'GET / HTTP/1.0\r\nHost: $NOTIFLOW_HOST\r\n\r\n' >&3 &&
    grep -q ListAllMyBucketsResult <&3" 2>/dev/null
}

# wait_ready NAME CHECK: polls CHECK until it passes; fails early (with the
# log tail) when the process we started dies, or after WAIT_SECS.
wait_ready() {
  local name=$1 check=$2 start=$SECONDS
  until "$check"; do
    # The raw recorded pid, not live_pid: just after the fork its cmdline can
    # still be the shell's, before exec makes it the service.
    if ! started_pid_alive "$name"; then
      show_log_tail "$name"
      die "$name exited before it was ready"
    fi
    if ((SECONDS - start >= WAIT_SECS)); then
      show_log_tail "$name"
      die "$name not ready after ${WAIT_SECS}s"
    fi
    sleep 0.5
  done
  log "$name ready after $((SECONDS - start))s (pid $(live_pid "$name"))"
}

show_log_tail() {
  local f
  f=$(log_file "$1")
  log "last lines of $f:"
  if [[ -f $f ]]; then tail -n 30 "$f" | sed 's/^/    /' >&2; fi
}

# ---------------------------------------------------------------- services

# start_detached NAME CMD...: runs CMD in its own session, immune to the
# script's shell ending, and records its pid. The caller's cwd is kept.
start_detached() {
  local name=$1
  shift
  setsid nohup "$@" >>"$(log_file "$name")" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
  log "started $name (pid $!), log $(log_file "$name")"
}

# ensure_service NAME PORT CHECK START: leaves a service that already
# answers alone, waits for one of ours that is still starting, refuses a
# port held by something else, and otherwise calls START.
ensure_service() {
  local name=$1 port=$2 check=$3 start=$4 pid
  pid=$(live_pid "$name")
  if "$check"; then
    if [[ -n $pid ]]; then
      log "$name already answering on $NOTIFLOW_HOST:$port (ours, pid $pid)"
    else
      log "$name already answering on $NOTIFLOW_HOST:$port (not started by up.sh; left alone)"
    fi
    return 0
  fi
  if [[ -n $pid && $(cat "$(port_file "$name")" 2>/dev/null) != "$port" ]]; then
    die "$name from $STATE_DIR (pid $pid) runs on port $(cat "$(port_file "$name")" 2>/dev/null || echo '?'), not $port: run infra/down.sh first, or use another NOTIFLOW_STATE_DIR"
  elif [[ -n $pid ]]; then
    log "$name (pid $pid) is ours but not answering yet; waiting"
  elif port_open "$port"; then
    die "port $port is in use by something that does not answer as $name; free it or set another port"
  else
    rm -f "$(pid_file "$name")"
    echo "$port" >"$(port_file "$name")"
    "$start"
  fi
  wait_ready "$name" "$check"
}

start_tansu() {
  [[ -x $TANSU_BIN ]] || install_tansu
  mkdir -p "$STATE_DIR/tansu"
  # The log's identity, new whenever tansu starts without its data file (a
  # new state dir, a purge): infra/demo.sh keeps the demo's Redis keys and
  # lake per log, so a new log comes with new state (a sink's offsets that
  # point into a log that is gone hold its partitions: docs/operations.md).
  if [[ ! -e $STATE_DIR/tansu/tansu.db || ! -s $STATE_DIR/tansu/log-id ]]; then
    date -u +%Y%m%dT%H%M%SZ >"$STATE_DIR/tansu/log-id"
  fi
  # The sqlite:// URL is relative to tansu's cwd. Never memory://: it loses
  # records when a fetch starts inside a batch (see SPEC §7).
  (
    cd "$STATE_DIR/tansu"
    start_detached tansu "$TANSU_BIN" broker \
      --cluster-id "$TANSU_CLUSTER_ID" \
      --listener-url "tcp://$NOTIFLOW_HOST:$KAFKA_PORT" \
      --advertised-listener-url "tcp://$NOTIFLOW_HOST:$KAFKA_PORT" \
      --storage-engine "sqlite://tansu.db"
  )
}

start_redis() {
  mkdir -p "$STATE_DIR/redis"
  # The flags this machine kind starts Redis with, but with pid file, data
  # dir and log in the state dir so down.sh can tell it is ours.
  redis-server --daemonize yes --bind "$NOTIFLOW_HOST" -::1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir "$STATE_DIR/redis" \
    --logfile "$(log_file redis)" --pidfile "$(pid_file redis)" >&2
  local tries=50
  while [[ ! -s $(pid_file redis) ]] && ((tries-- > 0)); do sleep 0.1; done
  log "started redis (pid $(live_pid redis)), log $(log_file redis)"
}

start_moto() {
  # python -m moto.server is the moto_server entry point, run by the venv's
  # interpreter so the recorded pid is the server's own.
  start_detached moto "$PYTHON" -m moto.server -H "$NOTIFLOW_HOST" -p "$S3_PORT"
}

print_env() {
  local env
  env="KAFKA_BROKERS=$NOTIFLOW_HOST:$KAFKA_PORT
REDIS_URL=redis://$NOTIFLOW_HOST:$REDIS_PORT"
  [[ $profile == tests ]] && env+="
S3_ENDPOINT=http://$NOTIFLOW_HOST:$S3_PORT
PYTHON=$PYTHON"
  # A test that needs a broker of its own (one whose log it wipes) runs this.
  [[ $profile == tests && -x $TANSU_BIN ]] && env+="
TANSU_BIN=$TANSU_BIN"
  # How builds and binaries find DuckDB (lib.sh), so a hand-run cargo after
  # sourcing this file builds and runs as the scripts do.
  use_build_cache
  if duckdb_prebuilt; then
    env+="
DUCKDB_LIB_DIR=$DUCKDB_LIB_DIR
LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  else
    env+="
NOTIFLOW_DUCKDB=bundled"
  fi
  printf '%s\n' "$env" >"$STATE_DIR/env"
  printf '%s\n' "$env"
}

main() {
  collect_plan
  if ((plan_only)); then
    make_plan
    return 0
  fi
  mkdir -p "$STATE_DIR"
  log "state dir $STATE_DIR; installing for: $profile"
  make_plan >&2
  apt_install "${MISSING_APT[@]}"
  ((NEED_TANSU == 0)) || install_tansu
  ((NEED_VENV == 0)) || install_venv
  ((NEED_DUCKDB == 0)) || install_duckdb
  ((NEED_NEXTEST == 0)) || install_nextest
  if ((build_deps)); then
    log "what building notiflow needs is here"
    return 0
  fi
  ensure_service tansu "$KAFKA_PORT" kafka_ready start_tansu
  ensure_service redis "$REDIS_PORT" redis_ready start_redis
  [[ $profile == demo ]] || ensure_service moto "$S3_PORT" s3_ready start_moto
  log "all services up"
  print_env
}

main; exit $?  # one line: editing this file while it runs is safe
