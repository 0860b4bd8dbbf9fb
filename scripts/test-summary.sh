#!/usr/bin/env bash
# Reads the output of `cargo test --no-fail-fast` (file $1) and prints the failed tests,
# each as the command that reruns it, then `tests: N passed, N failed`. Exits 1 when a
# test failed or a test binary ended before its summary (a crash, an abort).
#
# Counts come only from libtest's own `test result:` lines, matched whole: a test's
# message saying "3 failed" is output, not a count. A name is known only after its
# binary's summary, and the binary only from cargo's `to rerun pass` line after it, so
# names wait in `pending` until that line arrives.
set -euo pipefail
log=$1

awk '
/^test result: (ok|FAILED)\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored; [0-9]+ measured; [0-9]+ filtered out; finished in / {
    passed += $4; failed += $6; summarized = 1; listing = 0; next
}
/^failures:$/ { listing = 1; next }
listing && /^    [^ ]+$/ { sub(/^    /, ""); pending[++npending] = $0; next }
{ listing = 0 }
/^ +(Running|Doc-tests) / { summarized = 0 }
/to rerun pass `[^`]*`/ {
    match($0, /`[^`]*`/)
    target = substr($0, RSTART + 1, RLENGTH - 2)
    if (npending == 0 && !summarized)
        lines[++nlines] = "cargo test " target " (the test binary ended before its summary)"
    for (i = 1; i <= npending; i++)
        lines[++nlines] = "cargo test " target " -- --exact " pending[i]
    npending = 0
}
END {
    # Names with no rerun line after them (cargo changed its wording): still listed.
    for (i = 1; i <= npending; i++) lines[++nlines] = pending[i]
    if (nlines > 0) {
        print "failed tests:"
        for (i = 1; i <= nlines; i++) print "    " lines[i]
    }
    printf "tests: %d passed, %d failed\n", passed, failed
    exit (failed > 0 || nlines > 0) ? 1 : 0
}
' "$log"
