#!/usr/bin/env bash
# The main job on one machine: a registry, three sidecars and three demo
# agents (examples/agent.py) exchanging messages over WebRTC DataChannels.
# Ctrl-C stops everything cleanly. Everything lives under ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/demo
port=${PORT:-8080}
agents=(alpha bravo charlie)

command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is missing (the demo agents use it)" >&2; exit 1; }

echo "== building release binaries"
cargo build --release --locked --bins
bin=$root/target/release

mkdir -p "$demo"
keys=$demo/api_keys.json
if [ ! -f "$keys" ]; then
    # One random key per agent, plus an admin key; kept for later runs.
    {
        echo '{"keys": {'
        for name in "${agents[@]}"; do
            echo "  \"ak_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')\": {\"peer_id\": \"$name\", \"role\": \"agent\"},"
        done
        echo "  \"ak_admin_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')\": {\"peer_id\": \"admin\", \"role\": \"admin\"}"
        echo '}}'
    } >"$keys"
    chmod 600 "$keys"
fi
key_of() { python3 -c 'import json,sys; print(next(k for k,v in json.load(open(sys.argv[1]))["keys"].items() if v["peer_id"]==sys.argv[2]))' "$keys" "$1"; }

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "== stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "== stopped; logs are in $demo/*.log"
}
trap stop INT TERM EXIT

# Prefixes every line of a process's output so the interleaved log reads well.
run() {
    local tag=$1; shift
    "$@" > >(tee "$demo/$tag.log" | sed -u "s/^/[$tag] /") 2>&1 &
    pids+=($!)
}

echo "== registry on 127.0.0.1:$port (state in $demo/registry-state)"
run registry env -C "$demo" API_KEYS_FILE="$keys" STATE_DIR="$demo/registry-state" \
    "$bin/chatixia-registry" --bind 127.0.0.1 --port "$port"

for name in "${agents[@]}"; do
    echo "== sidecar and agent $name"
    run "sidecar-$name" env API_KEY="$(key_of "$name")" \
        TOKEN_URL="http://127.0.0.1:$port/api/token" SIGNALING_URL="ws://127.0.0.1:$port/ws" \
        IPC_SOCKET="$demo/$name.sock" STATE_DIR="$demo/sidecar-$name" ICE_ALLOW_LOOPBACK=1 \
        "$bin/chatixia-sidecar"
    run "agent-$name" python3 -u "$root/examples/agent.py" --socket "$demo/$name.sock" --name "$name"
done

echo "== dashboard: http://127.0.0.1:$port/ (admin actions take the ak_admin_… key of $keys)"
echo "== running; press Ctrl-C to stop"
wait
