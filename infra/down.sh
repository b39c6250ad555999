#!/usr/bin/env bash
# Why this exists: to stop exactly what infra/up.sh started, by the pids it
# recorded in the state dir, and nothing else: a Redis (or anything) that
# was already running before up.sh is left alone. Idempotent: with nothing
# of ours running it just says so and exits 0. Data stays in the state dir
# (tansu's SQLite file); pass --purge to delete the state dir as well.
# Usage: down.sh [--purge] [tansu|redis|moto ...] (no names: all three).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STOP_WAIT_SECS=15

# stop NAME: TERM the recorded pid, wait, then KILL; drop the pid file.
stop() {
  local name=$1 pid i
  pid=$(live_pid "$name")
  if [[ -z $pid ]]; then
    if [[ -e $(pid_file "$name") ]]; then
      log "$name: recorded pid is gone; stale pid file removed"
    else
      log "$name: no pid recorded by up.sh; nothing to stop"
    fi
    rm -f "$(pid_file "$name")" "$(port_file "$name")"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_WAIT_SECS * 10; i++)); do
    [[ -d /proc/$pid ]] || break
    sleep 0.1
  done
  if [[ -d /proc/$pid ]]; then
    log "$name did not stop in ${STOP_WAIT_SECS}s; killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pid_file "$name")" "$(port_file "$name")"
  log "$name stopped"
}

main() {
  local purge=0 name names=()
  [[ ${1:-} == --purge ]] && purge=1 && shift
  for name in "$@"; do
    [[ $name =~ ^(tansu|redis|moto)$ ]] || die "unknown service '$name' (tansu, redis or moto)"
    names+=("$name")
  done
  ((${#names[@]})) || names=(moto redis tansu)
  for name in "${names[@]}"; do stop "$name"; done
  ((${#names[@]} < 3)) || rm -f "$STATE_DIR/env"
  if ((purge)); then
    log "removing $STATE_DIR"
    rm -rf "$STATE_DIR"
  fi
}

main "$@"; exit $?  # one line: editing this file while it runs is safe
