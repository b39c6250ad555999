#!/usr/bin/env bash
# Why this exists: the README promises that its two commands work for a
# newcomer on a Debian 12 machine with only the Rust toolchain. What broke
# that before was invisible on a developer's machine (a pyenv python that
# accepts `pip install`; the test tools already installed), so this script
# runs both commands the way a newcomer's machine would, and checks each:
#
#   1. PATH without pyenv, conda or virtualenv entries, so `python3` is
#      Debian's /usr/bin/python3 (which refuses `pip install`, PEP 668), and
#      an empty virtual environment folder: the Python tools not yet installed.
#   2. infra/demo.sh, the real one (it builds notiflow if needed), on port 0
#      and a temporary data folder, until it reports events counted in
#      Redis; then Ctrl-C (SIGINT to its process group). It must exit 0, and
#      it must not have made the venv: the demo installs no test tool.
#   3. infra/test.sh with the same PATH and the still-empty venv folder: it
#      installs the test tools there and must pass.
#
# The build cache and the tansu binary in ~/.cache/notiflow are reused;
# NOTIFLOW_CACHE_DIR=<empty folder> makes it a true first run (about half an
# hour on 2 cores: BENCHMARKS.md "First run on a new machine").
# Usage: infra/newcomer.sh [--demo-only]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh

demo_only=0
[[ ${1:-} == --demo-only ]] && demo_only=1
COUNTS_WAIT_SECS=${NOTIFLOW_NEWCOMER_COUNTS_WAIT_SECS:-180}
BUILD_WAIT_SECS=${NOTIFLOW_NEWCOMER_BUILD_WAIT_SECS:-5400}

# 1. A newcomer's PATH and an empty venv folder.
PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -e pyenv -e conda -e '/venv/' -e virtualenv | paste -sd: -)
export PATH
unset PYENV_VERSION PYTHON VIRTUAL_ENV PYTHONHOME
[[ $(command -v python3) == /usr/bin/python3 ]] ||
  die "python3 on this PATH is $(command -v python3 || echo 'missing'), not Debian's /usr/bin/python3"
work=$(mktemp -d)
export NOTIFLOW_VENV_DIR=$work/venv
log "newcomer run: python3 is $(command -v python3) ($(python3 --version 2>&1)); venv folder $NOTIFLOW_VENV_DIR (empty)"
demo=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [[ -n $demo && -d /proc/$demo ]]; then kill -TERM -- "-$demo" 2>/dev/null || true; fi
  # moto runs from the venv about to be removed: a later infra/up.sh would
  # find it "ours" but broken. The broker and Redis stay up for reuse.
  infra/down.sh moto >&2 || true
  rm -rf "$work"
}
trap cleanup EXIT
start=$SECONDS

# 2. The demo, until counts show, then Ctrl-C.
export NOTIFLOW__API__LISTEN=127.0.0.1:0 NOTIFLOW__METRICS__LISTEN=127.0.0.1:0
export NOTIFLOW__LAKE__WAREHOUSE=$work/data/warehouse
export NOTIFLOW__LAKE__CATALOG_URI=sqlite://$work/data/catalog.db
export NOTIFLOW__REPORTS__OUTPUT=$work/data/reports
log "infra/demo.sh (its output: $work/demo.out, $work/demo.err)"
setsid infra/demo.sh >"$work/demo.out" 2>"$work/demo.err" </dev/null &
demo=$!
demo_start=$SECONDS
until grep -q '^dashboard: ' "$work/demo.out" 2>/dev/null; do
  [[ -d /proc/$demo ]] || { tail -n 40 "$work/demo.err" >&2; die "the demo exited before it printed its dashboard URL"; }
  ((SECONDS - demo_start < BUILD_WAIT_SECS)) || die "no dashboard URL after ${BUILD_WAIT_SECS}s"
  sleep 1
done
log "demo up after $(elapsed $((SECONDS - demo_start))) ($(grep -c '^dashboard: ' "$work/demo.out") dashboard line)"
counted_since=$SECONDS
until grep -Eq 'counted [1-9][0-9]* in Redis' "$work/demo.out"; do
  [[ -d /proc/$demo ]] || { tail -n 40 "$work/demo.err" >&2; die "the demo exited before it counted anything"; }
  ((SECONDS - counted_since < COUNTS_WAIT_SECS)) || { tail -n 5 "$work/demo.out" >&2; die "no counts in Redis ${COUNTS_WAIT_SECS}s after the demo started"; }
  sleep 1
done
log "demo counted events in Redis $(elapsed $((SECONDS - counted_since))) after it started: $(grep -E 'counted [1-9]' "$work/demo.out" | head -n 1)"
kill -INT -- "-$demo"
status=0
wait "$demo" || status=$?
demo=
((status == 0)) || { tail -n 40 "$work/demo.err" >&2; die "the demo exited with $status after Ctrl-C"; }
grep '^plan(demo):' "$work/demo.err" | sed 's/^/  /' >&2
if grep -Eq '^plan\(demo\): +(apt|venv|tansu) +(chromium|chromium-driver|prometheus|shellcheck|python3-venv|/)' "$work/demo.err"; then
  die "the demo's plan lists a test-only tool"
fi
[[ ! -e $NOTIFLOW_VENV_DIR ]] || die "the demo created $NOTIFLOW_VENV_DIR: it installed test tools"
log "demo: exit 0 after Ctrl-C; it installed no test tool (no venv at $NOTIFLOW_VENV_DIR)"
unset NOTIFLOW__API__LISTEN NOTIFLOW__METRICS__LISTEN NOTIFLOW__LAKE__WAREHOUSE NOTIFLOW__LAKE__CATALOG_URI NOTIFLOW__REPORTS__OUTPUT
printf '%(%FT%T)T\t%s\t%d\t%d\n' -1 "newcomer: demo.sh until counts, then Ctrl-C" $((SECONDS - demo_start)) 0 >>"$TIMINGS_FILE"
((demo_only == 0)) || exit 0

# 3. The tests, from the same empty venv folder.
status=0
infra/test.sh || status=$?
[[ -x $NOTIFLOW_VENV_DIR/bin/python ]] || die "infra/test.sh did not make the venv at $NOTIFLOW_VENV_DIR"
log "newcomer run: demo and tests in $(elapsed $((SECONDS - start))), tests exit $status"
exit "$status"
