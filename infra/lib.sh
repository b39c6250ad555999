# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for infra/up.sh and infra/down.sh (sourced, not run).
# Both scripts must agree on where state lives and how a recorded pid is
# recognised as still being "ours", so that lives here once.

NOTIFLOW_HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-9092}
REDIS_PORT=${REDIS_PORT:-6379}
S3_PORT=${S3_PORT:-9000}
STATE_DIR=${NOTIFLOW_STATE_DIR:-$HOME/.cache/notiflow/run}
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

# What building notiflow needs besides Rust: librdkafka is built from source
# by rdkafka-sys (Debian's 2.0.2 is too old for rdkafka 0.39).
ensure_build_deps() {
  local pkg missing=()
  for pkg in cmake libcurl4-openssl-dev libssl-dev pkg-config g++; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# The Rust toolchain and the build cache outside the clone, shared by every
# run (tests, demo, CI) so only notiflow's own crates rebuild.
use_build_cache() {
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/notiflow/target}
  command -v cargo >/dev/null || export PATH=$HOME/.cargo/bin:$PATH
}
