#!/usr/bin/env bash
# The fieldtrack demo, on this machine only: a real Docker engine, registry and nginx on
# loopback (installed from Debian's packages when missing), a demo app built offline, and
# the fieldtrack daemon. It deploys v1, then v2, then a broken image (production keeps
# serving v2), then rolls back, then turns canary steps on and deploys a version that fails
# one request in five (stopped at its first step, rolled back by itself), printing each
# command and what nginx serves after it, while a background client counts failed requests
# through nginx.
#
#   ./scripts/demo.sh              run it (as root on Debian; needs a Rust toolchain); the demo
#                                  site and daemon keep running afterwards, to poke at
#   CLEANUP=1 ./scripts/demo.sh    stop and remove everything it started at the end
set -euo pipefail
cd "$(dirname "$0")/.."

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
# Prints the command, runs it, and says how long it took (its exit code is kept).
run() {
    printf '\n$ %s\n' "$*"
    local start end rc=0
    start=$(date +%s%N)
    "$@" || rc=$?
    end=$(date +%s%N)
    printf '  (took %d.%02d s, exit %d)\n' $(((end - start) / 1000000000)) $((((end - start) / 10000000) % 100)) "$rc"
    return "$rc"
}

bold "Building fieldtrack and the test bed"
cargo build --quiet --bin fieldtrack && cargo build --quiet -p fieldtrack-testbed --bin testbed
FT=$PWD/target/debug/fieldtrack
TB=$PWD/target/debug/testbed

bold "Bringing up Docker, the registry and nginx on loopback (first run installs them)"
eval "$($TB up)"
bed_dir=$FIELDTRACK_TESTBED_DIR
[ -d "$bed_dir/sites/demo" ] && $TB site down "$bed_dir/sites/demo"
eval "$($TB site new demo)"
echo "site $SITE_DIR, nginx on $SITE_URL, images in $FIELDTRACK_TEST_REPOSITORY"
cd "$SITE_DIR"
export FIELDTRACK_CONFIG=$SITE_CONFIG
# The production nginx settings of docs/operations.md: the bed's nginx.conf has
# worker_shutdown_timeout and the proxy_* lines, its fieldtrack.toml names nginx's pid file
# (the drain waits for nginx's old workers); here also idle connections to the app.
sed -i '/^\[nginx\]$/a upstream_keepalive = 16' "$SITE_CONFIG"

cleanup() {
    [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null || true
    if [ "${CLEANUP:-}" = 1 ] || [ "${finished:-}" != 1 ]; then
        [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
        $TB site down "$SITE_DIR" || true
        echo "demo site and daemon stopped (the bed's engine and registry keep running: $TB down stops them)"
        return
    fi
    cat <<EOT

The demo keeps running:
  site folder   $SITE_DIR   (fieldtrack.toml, desired.toml, .deploy_history, .fieldtrack/)
  nginx         $SITE_URL   (try: curl $SITE_URL/version)
  daemon        pid $daemon_pid, log $SITE_DIR/daemon.log
Poke it:
  export FIELDTRACK_CONFIG=$SITE_CONFIG
  $FT status; $FT deploy v3; $FT rollback; $FT plan
  printf 'image = "v4"\n' > $SITE_DIR/.d.tmp && mv $SITE_DIR/.d.tmp $SITE_DIR/desired.toml
Stop everything it started:
  kill $daemon_pid; $TB site down $SITE_DIR; $TB down
EOT
}
trap cleanup EXIT

bold "Starting the daemon (logs in $SITE_DIR/daemon.log)"
"$FT" daemon >daemon.log 2>&1 &
daemon_pid=$!
sleep 1

served() { printf '  nginx serves: %s\n' "$(curl -s --max-time 2 "$SITE_URL/version" || echo '(nothing)')"; }

bold "1. First deployment"
run "$FT" deploy v1 --by demo --note "first release"
served

# From now on a client hits nginx every 20 ms and counts what fails.
(
    ok=0 failed=0
    while [ -f "$SITE_DIR/desired.toml" ]; do
        if curl -sf --max-time 2 -o /dev/null "$SITE_URL/version"; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
        echo "$ok $failed" >"$SITE_DIR/load.count"
        sleep 0.02
    done
) &
load_pid=$!

bold "2. A new version: started in the idle color, health-gated, then switched to"
run "$FT" deploy v2 --by demo --note "new feature"
served

bold "3. A broken version: its health check answers 500, so traffic never moves"
run "$FT" deploy unhealthy --by demo || echo "  (exit $?: failed as expected, production untouched)"
served

bold "4. A version that crashes on start: fails at once, with its own error line"
run "$FT" deploy crash --by demo || echo "  (exit $?: failed as expected)"
served

bold "5. Rollback to the previous version"
run "$FT" rollback --yes --by demo
served

read -r ok failed <"$SITE_DIR/load.count"

bold "6. Canary steps: a version that fails one request in five gets 10% of the traffic first"
# nginx logs in fieldtrack's JSON format (the bed's nginx.conf declares it, as fieldtrack
# init's snippets do); the daemon rereads its config on SIGHUP.
cat >>"$SITE_CONFIG" <<'EOT'

[canary]
steps = [{ weight = 10, pause = "20s" }, { weight = 50, pause = "20s" }]
max_error_rate = 0.01
min_requests = 20
EOT
kill -HUP "$daemon_pid"
sleep 1
run "$FT" deploy err5 --by demo || echo "  (exit $?: stopped at step 1, nginx back on v1 alone, the desired file rolled back)"
served
run "$FT" history

bold "Where things stand"
run "$FT" status
kill "$load_pid" 2>/dev/null || true
read -r ok6 failed6 <"$SITE_DIR/load.count"
bold "Requests through nginx during steps 2-5: $ok answered, $failed failed"
bold "During step 6: $((ok6 - ok)) answered, $((failed6 - failed)) failed (the canary's own 500s, at 10% of the traffic, until it was stopped)"
finished=1
