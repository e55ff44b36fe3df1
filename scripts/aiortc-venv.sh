#!/usr/bin/env bash
# Creates target/aiortc-venv with the pinned aiortc stack that the interop
# test (tests/tests/sidecar_interop_aiortc.rs) runs as an independent WebRTC
# peer. Idempotent: when the venv already matches
# tests/interop/requirements.txt it returns at once, without the network.
# Any failure (no python3, no venv module, no network for pip) fails the
# script loudly; it never skips. Override the interpreter with PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/aiortc-venv
req=tests/interop/requirements.txt
stamp=$venv/.requirements.sha256
python=${PYTHON:-python3}

want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]] &&
    "$venv/bin/python" -c 'import aiortc, aioice, websockets' 2>/dev/null; then
    echo "aiortc venv up to date: $venv (aiortc $("$venv/bin/python" -c 'import aiortc; print(aiortc.__version__)'))"
    exit 0
fi

if ! command -v "$python" >/dev/null; then
    echo "aiortc-venv: $python not found; install Python 3.10+ (with its venv module)" >&2
    exit 1
fi
echo "creating $venv with $("$python" --version 2>&1) and $req"
rm -rf "$venv"
mkdir -p target
if ! "$python" -m venv "$venv"; then
    echo "aiortc-venv: '$python -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req"; then
    echo "aiortc-venv: pip install -r $req FAILED (network or package index unreachable?);" \
        "the aiortc interop test needs it (or set CHATIXIA_SKIP_AIORTC=1 to skip that test)" >&2
    exit 1
fi
"$venv/bin/python" -c 'import aiortc, aioice, websockets'
echo "$want" >"$stamp"
echo "aiortc venv ready: $venv (aiortc $("$venv/bin/python" -c 'import aiortc; print(aiortc.__version__)'))"
