#!/usr/bin/env bash
# The benchmarks of issue 7 on the real test bed (Docker engine, registry, nginx; installed
# and started when missing, as for scripts/test.sh): deploy and rollback latency against the
# plain script bench/baseline.sh, zero downtime under load, the daemon's CPU and memory, and
# the nginx reload lab. Prints one table (Markdown) on stdout and keeps a copy in
# target/bench/latest.md; progress goes to stderr. What each figure means:
# docs/performance.md.
#
#   ./scripts/bench.sh                     every figure; latencies are medians of 3 runs
#                                          (about 6 minutes on 2 cores once the release
#                                          build is there; a first release build of all
#                                          the dependencies adds about 6.5 minutes)
#   ./scripts/bench.sh --runs 5            more runs per latency figure (about 1 minute more)
#   ./scripts/bench.sh --only ab           some sections: a deploy, b rollback, c load,
#                                          d daemon idle, e nginx lab
#   ./scripts/bench.sh --idle-secs 20      a shorter idle window
#   ./scripts/bench.sh --set rollout.drain='"2s"'   override a key of every fieldtrack site
#
# Any option is passed to the bench binary (testbed/src/bin/bench.rs; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
started=$(date +%s)

step "building fieldtrack (release) and the bench"
cargo build --quiet --release --bin fieldtrack
cargo build --quiet --release -p fieldtrack-testbed --bin bench --bin testbed

step "test bed: Docker engine, registry, nginx, test images"
eval "$(./target/release/testbed up)"
echo "engine $DOCKER_HOST, registry $FIELDTRACK_TEST_REGISTRY" >&2

step "bench $*"
mkdir -p target/bench
out=target/bench/latest.md
# --runs 3 by default so that the whole script stays under 10 minutes on 2 cores; a later
# --runs given by the caller wins.
./target/release/bench --runs 3 --fieldtrack target/release/fieldtrack --baseline bench/baseline.sh "$@" >"$out.tmp"
{
    echo "fieldtrack $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
    cat "$out.tmp"
} >"$out"
rm -f "$out.tmp"
cat "$out"
step "done in $(($(date +%s) - started)) s; the table is also in $out"
