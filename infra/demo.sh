#!/usr/bin/env bash
# The README's first command: starts the local servers (installing what is
# missing), builds notiflow and runs `notiflow demo` until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/notiflow/target}
command -v cargo >/dev/null || export PATH=$HOME/.cargo/bin:$PATH
missing=()
for pkg in cmake libcurl4-openssl-dev libssl-dev pkg-config g++; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
set -a
# shellcheck disable=SC1090
source <(infra/up.sh)
set +a
cargo build --locked -p notiflow
exec "$CARGO_TARGET_DIR/debug/notiflow" demo "$@"
