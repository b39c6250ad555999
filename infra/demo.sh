#!/usr/bin/env bash
# The README's first command: starts the local servers (installing what is
# missing), builds notiflow and runs `notiflow demo` until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh
use_build_cache
ensure_build_deps
set -a
# shellcheck disable=SC1090
source <(infra/up.sh)
set +a
cargo build --locked -p notiflow
exec "$CARGO_TARGET_DIR/debug/notiflow" demo "$@"
