#!/usr/bin/env bash
# The core/shell boundary (docs/ARCHITECTURE.md): clippy.toml forbids
# clocks, threads, name lookups, files, sockets and random sources, and this
# checks that the lints are switched off only where IO belongs: the top of a
# daemon's shell folder (src/shell/mod.rs, covering the folder), its
# main.rs, `#[cfg(test)]` items (the `allow` on the line right after
# `#[cfg(test)]`) and the simulation harness of the sidecar's core tests
# (core/sim.rs, compiled for tests only). Exit status 1 names each
# offending line.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
while IFS=: read -r file line _; do
    case "$file" in
        registry/src/shell/mod.rs | sidecar/src/shell/mod.rs | registry/src/main.rs | sidecar/src/main.rs | \
            sidecar/src/core/sim.rs)
            continue ;;
    esac
    previous=$(sed -n "$((line - 1))p" "$file" | tr -d '[:space:]')
    if [[ $previous == "#[cfg(test)]" ]]; then
        continue
    fi
    echo "check-boundary: $file:$line switches the core/shell lints off outside a shell or test" >&2
    status=1
done < <(grep -rnE 'allow\([^)]*clippy::disallowed_(methods|types)' protocol/src registry/src sidecar/src || true)

# Every crate that is not IO glue or a test harness must fall under the
# root clippy.toml (a clippy.toml of its own would replace it).
for dir in protocol registry sidecar; do
    if [[ -e $dir/clippy.toml ]]; then
        echo "check-boundary: $dir/clippy.toml would replace the boundary rules of ./clippy.toml" >&2
        status=1
    fi
done
if [[ $status == 0 ]]; then
    echo "core/shell boundary: ok"
fi
exit $status
