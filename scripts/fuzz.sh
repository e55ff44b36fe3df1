#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that meets outside input, on
# stable Rust: libFuzzer (libfuzzer-sys) driving targets compiled with
# LLVM's SanitizerCoverage through stable codegen flags, so no nightly
# toolchain and no cargo-fuzz are needed. The targets are in fuzz/.
#
#   scripts/fuzz.sh                 every target for 60 s
#   scripts/fuzz.sh TARGET [SECS]   one target ("all" for every one)
#   scripts/fuzz.sh --list          the targets
#
# What a run finds goes to target/fuzz/corpus/TARGET (kept between runs);
# the committed seeds in fuzz/corpus/TARGET are read, never written. A
# crash stops that target, saves the input under target/fuzz/artifacts/
# and makes the script fail; add the input to a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(registry_ws registry_http registry_state registry_relay jwt
         sidecar_ipc sidecar_signaling sidecar_datagram sdp wire_json)
which=${1:-all}
seconds=${2:-60}
if [[ $which == --list ]]; then
    printf '%s\n' "${targets[@]}"
    exit 0
fi
if [[ $which != all ]] && ! printf '%s\n' "${targets[@]}" | grep -qx "$which"; then
    echo "unknown target $which; try --list" >&2
    exit 2
fi
[[ $which == all ]] || targets=("$which")

# libFuzzer's C++ sources (built by libfuzzer-sys) need a C++ compiler.
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        for _ in 1 2 3; do apt-get update -qq && break || sleep 5; done
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzzing needs a C++ compiler (g++)" >&2
        exit 1
    fi
fi

host=$(rustc -vV | sed -n 's/^host: //p')
# The flags cargo-fuzz uses, all stable. The explicit --target keeps them
# off build scripts and proc macros, which must not be instrumented.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
out=target/fuzz
echo "== building the fuzz targets"
# Not --locked: fuzz/ is its own workspace, so a dependency added to a
# daemon changes fuzz/Cargo.lock too; cargo adds only what is missing.
cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" --target-dir "$out" --bins

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t
    artifacts=$out/artifacts/$t
    mkdir -p "$corpus" "$artifacts" "fuzz/corpus/$t"
    log=$out/$t.log
    echo "== $t for ${seconds} s"
    status=0
    "$out/$host/release/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    found=$(find "$artifacts" -type f | wc -l)
    line=$(printf '%-18s %11s runs %8s exec/s  cov %6s  ft %7s  corpus %5s  findings %s' \
        "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "$(find "$corpus" -type f | wc -l)" "$found")
    echo "$line"
    summary+=("$line")
    if [[ $status != 0 || $found != 0 ]]; then
        failed+=("$t")
        tail -40 "$log" >&2
    fi
done
echo "== summary (${seconds} s per target)"
printf '%s\n' "${summary[@]}"
if (( ${#failed[@]} )); then
    echo "findings in: ${failed[*]} (inputs under $out/artifacts/)" >&2
    exit 1
fi
