#!/usr/bin/env bash
# The README's test command: everything a newcomer needs to pass the tests.
# Installs the build dependencies, starts the local servers (infra/up.sh) on a
# fresh broker, then runs the checks CI runs: fmt, clippy -D warnings, and
# every test against the real servers. Builds go to a fixed target dir
# outside the clone ($HOME/.cache/notiflow/target) so later runs are warm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh
use_build_cache
ensure_build_deps
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >&2 || true

# A fresh broker each run: tansu 0.6.0 fetches scan from the fetch offset to
# the high watermark, so leftovers of earlier runs only cost time (and a
# wedged broker from an interrupted run would fail everything).
if [[ ${NOTIFLOW_KEEP_BROKER:-0} != 1 ]]; then
  infra/down.sh --purge >&2 || true
fi
# Captured first: a failing up.sh must stop the run here (a process
# substitution's exit status would be lost).
env_lines=$(infra/up.sh)
set -a
# shellcheck disable=SC1090
source <(printf '%s\n' "$env_lines")
set +a

infra/check_deploy.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (real broker at $KAFKA_BROKERS)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --workspace --locked 2>&1 | tee "$out"
# One closing line with the totals of every test binary (cargo's own last
# line is the summary of whichever binary ran last, often an empty doctest).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
