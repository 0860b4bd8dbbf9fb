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
# Any option is passed to the bench binary (testbed/src/bin/bench/, one module per section in
# sections/; --help lists them).
#
# The Swarm figures of issue 13 (testbed/src/bin/bench_swarm.rs, docs/performance.md "Swarm"):
#
#   ./scripts/bench.sh --swarm             only the Swarm bench on the bed's multi-node cluster
#                                          (dockerd nodes in network namespaces, brought up
#                                          when missing): switches under load against
#                                          `docker service update/rollback`, a node's death,
#                                          and scaling on a 10-node cluster (rebuilt, then
#                                          back to 3 nodes); about 10 minutes. Its table goes
#                                          to target/bench/swarm.md
#   ./scripts/bench.sh --swarm --only switch,death   some sections (switch, death, scale;
#                                          canary, figure 6, only when asked)
#   ./scripts/bench.sh --with-swarm [...]  the figures above, then the Swarm bench's table
#                                          appended to target/bench/latest.md
#
# The canary figures of issue 14 (section f of the bench, docs/performance.md "Canary"):
#
#   ./scripts/bench.sh --canary            only section f: how many requests reach a bad
#                                          image (flaky, err5) and how many of them fail,
#                                          blue/green with auto-rollback against a canary
#                                          step of 10%, under the load of section c; medians
#                                          of 3 runs, about 8 minutes. Its table goes to
#                                          target/bench/canary.md
#   ./scripts/bench.sh --canary --runs 1 --canary-window-secs 10   a quick look (1.5 min)
#
# After --swarm, options go to bench-swarm (--help lists them). The Swarm bench takes the
# cluster's exclusive lock for each section: tests on the cluster wait, and it waits for them.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
started=$(date +%s)

# The Swarm bench: builds, brings the bed and cluster up, prints its table (stdout) and keeps
# it in the file $1; options after that go to bench-swarm.
swarm_bench() {
    local out=$1
    shift
    step "building fieldtrack (release) and the Swarm bench"
    cargo build --quiet --release --bin fieldtrack
    cargo build --quiet --release -p fieldtrack-testbed --bin bench-swarm --bin testbed
    step "test bed and its swarm: dockerd nodes in network namespaces"
    eval "$(./target/release/testbed up)"
    eval "$(./target/release/testbed swarm up)"
    echo "manager $FIELDTRACK_SWARM_MANAGER, nodes $FIELDTRACK_SWARM_NODES" >&2
    step "bench-swarm $*"
    mkdir -p target/bench
    ./target/release/bench-swarm --fieldtrack target/release/fieldtrack "$@" >"$out.tmp"
    {
        echo "## Swarm (issue 13)"
        echo
        echo "fieldtrack $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
        echo
        cat "$out.tmp"
    } >"$out"
    rm -f "$out.tmp"
    cat "$out"
}

with_swarm=
out=target/bench/latest.md
sections=()
case "${1:-}" in
--canary)
    shift
    out=target/bench/canary.md
    sections=(--only f)
    ;;
--swarm)
    shift
    swarm_bench target/bench/swarm.md "$@"
    step "done in $(($(date +%s) - started)) s; the table is also in target/bench/swarm.md"
    exit 0
    ;;
--with-swarm)
    shift
    with_swarm=1
    ;;
esac

step "building fieldtrack (release) and the bench"
cargo build --quiet --release --bin fieldtrack
cargo build --quiet --release -p fieldtrack-testbed --bin bench --bin testbed

step "test bed: Docker engine, registry, nginx, test images"
eval "$(./target/release/testbed up)"
echo "engine $DOCKER_HOST, registry $FIELDTRACK_TEST_REGISTRY" >&2

step "bench $*"
mkdir -p target/bench
# --runs 3 by default so that the whole script stays under 10 minutes on 2 cores; a later
# --runs (or --only) given by the caller wins.
./target/release/bench --runs 3 ${sections[@]+"${sections[@]}"} --fieldtrack target/release/fieldtrack --baseline bench/baseline.sh "$@" >"$out.tmp"
{
    echo "fieldtrack $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
    cat "$out.tmp"
} >"$out"
rm -f "$out.tmp"
cat "$out"
if [ -n "$with_swarm" ]; then
    swarm_bench target/bench/swarm.md >/dev/null
    { echo; cat target/bench/swarm.md; } >>"$out"
    cat target/bench/swarm.md
fi
step "done in $(($(date +%s) - started)) s; the table is also in $out"
