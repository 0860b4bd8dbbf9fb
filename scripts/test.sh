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

step "dependency rules: cargo deny check licenses bans sources (deny.toml)"
# Installed once, like cargo-deb. The advisories check is left out: it fetches the RustSec
# database from the network, which test machines cannot reach (see deny.toml).
if ! cargo deny --version >/dev/null 2>&1; then
    echo "==> installing cargo-deny (once)" >&2
    cargo install cargo-deny --version '^0.20' --locked
fi
cargo deny --offline check --hide-inclusion-graph licenses bans sources

step "cargo test (unit and real-engine tests)"
# --no-fail-fast: one failing test binary must not hide the others' results. The harness's
# --quiet keeps cargo's "Running" lines, which say which binary the results belong to.
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast -- --quiet "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

step "done in $(( $(date +%s) - started )) s"
summary=0
./scripts/test-summary.sh "$log" || summary=$?
rm -f "$log"
# cargo's status also covers what has no test result line (a build error).
if [ "$status" -eq 0 ] && [ "$summary" -ne 0 ]; then
    status=$summary
fi
exit "$status"
