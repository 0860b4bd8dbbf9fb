#!/usr/bin/env bash
# Drop-in for the old deploy-bluegreen.sh: `deploy-bluegreen.sh SHA`.
# Everything the old script did (pull, start the idle color, health check, switch nginx,
# remove the old color, record the history) is now `fieldtrack deploy`; this keeps an
# existing CI step working. Exit codes: 0 deployed, 1 failed (production untouched), 2 bad input.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 IMAGE_SHA" >&2
    exit 2
fi
exec "${FIELDTRACK:-fieldtrack}" deploy "$1" --by "${DEPLOY_BY:-ci}"
