#!/usr/bin/env bash
# The README's test command: everything a newcomer needs to pass the tests.
# Installs what the tests need (infra/up.sh --for tests: build tools, the
# broker, Redis, S3, the Python tools in notiflow's own venv, Chromium,
# Prometheus, shellcheck) and starts the servers on a fresh broker, then
# runs the checks CI runs: the deployment files, fmt, clippy -D warnings,
# and every test against the real servers. Builds go to a fixed target dir
# outside the clone ($HOME/.cache/notiflow/target), shared with
# infra/demo.sh, so later runs are warm. Each slow step says what it is and
# about how long it takes, and the run ends with every step's wall time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh
use_build_cache
mkdir -p "$(dirname "$TIMINGS_FILE")"
touch "$TIMINGS_FILE"
first_timing=$(($(wc -l <"$TIMINGS_FILE") + 1))
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >&2 || true

# A fresh broker each run: tansu 0.6.0 fetches scan from the fetch offset to
# the high watermark, so leftovers of earlier runs only cost time (and a
# wedged broker from an interrupted run would fail everything).
if [[ ${NOTIFLOW_KEEP_BROKER:-0} != 1 ]]; then
  infra/down.sh --purge >&2 || true
fi
# notiflow builds while up.sh installs the rest (tansu's build above all).
build_in_background tests
trap stop_build EXIT
# Captured first: a failing up.sh must stop the run here (a process
# substitution's exit status would be lost).
env_lines=$(infra/up.sh --for tests)
set -a
# shellcheck disable=SC1090
source <(printf '%s\n' "$env_lines")
set +a
use_venv
wait_build

infra/check_deploy.sh
log "cargo fmt --check"
cargo fmt --all -- --check
run_step "cargo clippy --all-targets -D warnings" "$EST_CLIPPY" \
  cargo clippy --workspace --all-targets --locked "${CARGO_FEATURE_ARGS[@]}" -- -D warnings
log "cargo test (real broker at $KAFKA_BROKERS)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
# cargo-nextest (installed by up.sh) bounds every test's time:
# .config/nextest.toml. The workspace has no doctests (every code block in
# the docs is `text`), so nextest runs every test there is.
# shellcheck disable=SC2016  # $1 is the inner shell's
run_step "cargo nextest run --workspace" "about 8 min on 2 cores" \
  bash -c 'out=$1; shift; set -o pipefail; cargo nextest run --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$out"' _ "$out" "${CARGO_FEATURE_ARGS[@]}" || status=$?
log "wall time of this run's steps (also in $TIMINGS_FILE):"
tail -n +"$first_timing" "$TIMINGS_FILE" | awk -F'\t' '{ printf "  %6ds  %s%s\n", $3, $2, ($4 == 0 ? "" : "  (FAILED)") }' >&2
# One closing line with the totals, from nextest's summary ("193 tests run:
# 190 passed, 2 failed, 1 timed out, 0 skipped"); a test killed for its
# time counts as failed.
awk '/Summary \[/ {
  for (i = 1; i < NF; i++) {
    if ($(i + 1) ~ /^passed/) p = $i
    if ($(i + 1) ~ /^failed/ || $(i + 1) == "timed") f += $i
  }
} END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
