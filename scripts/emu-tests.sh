# Sourced by scripts/emu-memcheck.sh and scripts/emu-racecheck.sh, which run emulated test
# bodies under a checker one process each.

# The release test executable that `cargo test --features cuda --no-run ARGS` builds (e.g.
# --lib, or --test backend_dual); cargo's messages go to $BUILD_LOG (default: nowhere).
test_binary() {
    cargo test --release --features cuda --no-run "$@" --message-format=json \
        2>"${BUILD_LOG:-/dev/null}" |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' | tail -1
}

# `FN TEST` for each TEST, two at a time (a checker runs a process's threads one at a time),
# the next as soon as one ends; fails if any did.
two_at_a_time() {
    local fn=$1 fail=0 running=0 t
    shift
    for t in "$@"; do
        "$fn" "$t" &
        running=$((running + 1))
        if ((running >= 2)); then wait -n || fail=1; running=$((running - 1)); fi
    done
    while ((running > 0)); do wait -n || fail=1; running=$((running - 1)); done
    return "$fail"
}
