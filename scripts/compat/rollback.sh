#!/usr/bin/env bash
# Drop-in for the old rollback.sh: shows the same screen and asks the same question.
# Extra arguments go to `fieldtrack rollback` (--yes, --to N).
set -euo pipefail
exec "${FIELDTRACK:-fieldtrack}" rollback "$@"
