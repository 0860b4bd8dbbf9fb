#!/usr/bin/env bash
# Runs every fieldtrack test against the real test bed: a Docker engine, a registry and
# nginx from Debian's packages, installed and started here when missing (see testbed/).
# Exits non-zero on any failure. Safe to run again and again: the bed is reused.
#
#   ./scripts/test.sh              everything
#   ./scripts/test.sh deploy       only tests whose name contains "deploy" (cargo test filter)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "test bed: Docker engine, registry, nginx, test images"
cargo build --quiet -p fieldtrack-testbed --bin testbed
eval "$(./target/debug/testbed up)"
echo "engine $DOCKER_HOST, registry $FIELDTRACK_TEST_REGISTRY"

if [ "${CI:-}" = "true" ]; then
    # CI leaves nothing running behind it; a developer keeps the bed for the next run.
    trap './target/debug/testbed swarm down || true; ./target/debug/testbed down || true' EXIT
fi

step "swarm bed: three dockerd nodes in network namespaces, an edge namespace"
eval "$(./target/debug/testbed swarm up)"
echo "manager $FIELDTRACK_SWARM_MANAGER, nodes $FIELDTRACK_SWARM_NODES"

step "packaging tools: cargo-deb (installed once; the package test builds a .deb)"
./scripts/package.sh --install-tools

step "cargo test (unit and real-engine tests)"
log=$(mktemp)
set +e
cargo test --workspace --quiet -- "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"

step "done in $(( $(date +%s) - started )) s"
echo "tests: $passed passed, $failed failed"
exit "$status"
