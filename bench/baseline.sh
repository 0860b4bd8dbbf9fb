#!/usr/bin/env bash
# The baseline of scripts/bench.sh: a plain blue/green deploy script doing what the seed's
# deploy-bluegreen.sh documents, step by step, and nothing more. It is what fieldtrack is
# measured against; it is not a tool to deploy with (no drain, no rollback on failure after
# the switch, no lock).
#
#   REPO=... TAG=... APP=... BLUE_PORT=... GREEN_PORT=... UPSTREAM_FILE=... UPSTREAM_NAME=... \
#   NGINX_TEST="nginx -t" NGINX_RELOAD="nginx -s reload" HISTORY_FILE=... bench/baseline.sh
#
# Steps: find the live color from the port in the upstream file; docker pull; docker run the
# idle color on 127.0.0.1:PORT:8080 with fieldtrack's labels; curl /health up to 20 times,
# 3 s apart; rewrite the upstream file; nginx -t (restore the file on failure); reload;
# docker rm -f the old color; prepend the tag to the history (at most HISTORY_LIMIT lines).
# DOCKER_HOST is used by docker as usual. NGINX_TEST and NGINX_RELOAD are split on spaces.
# Exit 0 deployed, 1 failed.
set -euo pipefail

: "${REPO:?REPO is required (the image repository)}"
: "${TAG:?TAG is required (the tag to deploy)}"
APP=${APP:-api}
BLUE_PORT=${BLUE_PORT:-3001}
GREEN_PORT=${GREEN_PORT:-3002}
CONTAINER_PORT=${CONTAINER_PORT:-8080}
UPSTREAM_FILE=${UPSTREAM_FILE:-/etc/nginx/conf.d/fieldtrack-$APP.conf}
UPSTREAM_NAME=${UPSTREAM_NAME:-fieldtrack_$APP}
NGINX_TEST=${NGINX_TEST:-nginx -t}
NGINX_RELOAD=${NGINX_RELOAD:-nginx -s reload}
HISTORY_FILE=${HISTORY_FILE:-.deploy_history}
HISTORY_LIMIT=${HISTORY_LIMIT:-5}
HEALTH_PATH=${HEALTH_PATH:-/health}
HEALTH_TRIES=${HEALTH_TRIES:-20}
HEALTH_SLEEP=${HEALTH_SLEEP:-3}

set -f # the nginx commands are split on spaces, never globbed
log() { printf 'baseline: %s\n' "$*" >&2; }

image="$REPO:$TAG"
live_port=$(grep -o 'server 127\.0\.0\.1:[0-9]*' "$UPSTREAM_FILE" 2>/dev/null | head -n 1 | cut -d: -f2 || true)
if [ "$live_port" = "$BLUE_PORT" ]; then
    old=blue new=green new_port=$GREEN_PORT
else
    old=green new=blue new_port=$BLUE_PORT
fi
log "live: $old (port ${live_port:-none}); deploying $image as $new on port $new_port"

docker pull -q "$image" >/dev/null
docker rm -f "$APP-$new" >/dev/null 2>&1 || true
docker run -d --name "$APP-$new" --restart unless-stopped \
    -p "127.0.0.1:$new_port:$CONTAINER_PORT" \
    --label "fieldtrack.app=$APP" --label "fieldtrack.color=$new" \
    --label "fieldtrack.image=$image" \
    "$image" >/dev/null

healthy=0
for i in $(seq 1 "$HEALTH_TRIES"); do
    if curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$new_port$HEALTH_PATH"; then
        healthy=1
        log "healthy after $i tries"
        break
    fi
    [ "$i" -lt "$HEALTH_TRIES" ] && sleep "$HEALTH_SLEEP"
done
if [ "$healthy" != 1 ]; then
    log "$APP-$new never became healthy; removing it, production untouched"
    docker rm -f "$APP-$new" >/dev/null || true
    exit 1
fi

backup=$(mktemp "$UPSTREAM_FILE.bak.XXXXXX")
cp "$UPSTREAM_FILE" "$backup" 2>/dev/null || true
tmp=$(mktemp "$UPSTREAM_FILE.tmp.XXXXXX")
printf 'upstream %s {\n    server 127.0.0.1:%s;\n}\n' "$UPSTREAM_NAME" "$new_port" >"$tmp"
mv "$tmp" "$UPSTREAM_FILE"
# shellcheck disable=SC2086 # split on purpose
if ! $NGINX_TEST; then
    log "nginx test failed; restoring the upstream file"
    mv "$backup" "$UPSTREAM_FILE"
    docker rm -f "$APP-$new" >/dev/null || true
    exit 1
fi
rm -f "$backup"
# shellcheck disable=SC2086
$NGINX_RELOAD

docker rm -f "$APP-$old" >/dev/null 2>&1 || true

tmp=$(mktemp "$HISTORY_FILE.tmp.XXXXXX")
{ echo "$TAG"; cat "$HISTORY_FILE" 2>/dev/null || true; } | awk -v n="$HISTORY_LIMIT" 'NR <= n' >"$tmp"
mv "$tmp" "$HISTORY_FILE"
log "deployed $image on $new"
