#!/usr/bin/env python3
"""A tiny chatixia-mesh agent using only the Python standard library.

It shows the whole IPC protocol of a sidecar: newline-delimited JSON over a
Unix socket, commands `{"type": ..., "payload": ...}` one way and events the
other. Every few seconds it broadcasts a greeting to all peers; it answers
each greeting it receives with a direct `send` to the peer that sent it.

    python3 examples/agent.py --socket /tmp/chatixia-sidecar.sock --name alpha
"""
import argparse
import json
import select
import socket
import sys
import time

MAX_LINE = 64 * 1024  # what the original Python agent accepts per line


def connect(path, name):
    """Connects to the sidecar's socket, waiting while the sidecar starts."""
    deadline = time.monotonic() + 30
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                sys.exit(f"[{name}] no sidecar at {path}")
            time.sleep(0.2)


def command(sock, kind, payload=None):
    line = json.dumps({"type": kind, "payload": payload if payload is not None else {}})
    sock.sendall(line.encode() + b"\n")


def mesh_message(kind, name, payload, request_id=""):
    return {"type": kind, "request_id": request_id, "source_agent": name, "target_agent": "", "payload": payload}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/tmp/chatixia-sidecar.sock")
    parser.add_argument("--name", default="agent")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between broadcasts")
    parser.add_argument("--count", type=int, default=0, help="stop after this many broadcasts (0 = never)")
    args = parser.parse_args()

    sock = connect(args.socket, args.name)
    print(f"[{args.name}] attached to {args.socket}", flush=True)
    command(sock, "status")
    buf = b""
    sent = 0
    next_broadcast = time.monotonic() + args.interval
    peers = set()
    while True:
        timeout = max(0.0, next_broadcast - time.monotonic())
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                print(f"[{args.name}] sidecar closed the socket", flush=True)
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if len(line) > MAX_LINE:
                    continue
                handle(sock, args.name, json.loads(line), peers)
        if time.monotonic() >= next_broadcast:
            next_broadcast += args.interval
            if peers:
                sent += 1
                text = f"hello #{sent} from {args.name}"
                command(sock, "broadcast", {"message": mesh_message("greeting", args.name, {"text": text})})
                print(f"[{args.name}] -> all {sorted(peers)}: {text}", flush=True)
                if args.count and sent >= args.count:
                    return


def handle(sock, name, event, peers):
    kind, payload = event.get("type"), event.get("payload") or {}
    if kind == "peer_connected":
        peers.add(payload["peer_id"])
        print(f"[{name}] link up: {payload['peer_id']}", flush=True)
    elif kind == "peer_disconnected":
        peers.discard(payload["peer_id"])
        print(f"[{name}] link down: {payload['peer_id']}", flush=True)
    elif kind == "message":
        msg, peer = payload["message"], payload["from_peer"]
        text = (msg.get("payload") or {}).get("text", "")
        print(f"[{name}] <- {peer} ({msg['type']}): {text}", flush=True)
        if msg["type"] == "greeting":
            reply = mesh_message("greeting_ack", name, {"text": f"{name} got '{text}'"}, msg.get("request_id", ""))
            command(sock, "send", {"target_peer": peer, "message": reply})
    elif kind == "status":
        print(f"[{name}] sidecar {payload.get('peer_id')}: registry {payload.get('registry')}", flush=True)
        peers.update(payload.get("peers") or [])
    elif kind == "peer_list":
        peers.clear()
        peers.update(payload.get("peers") or [])
    elif kind == "error":
        print(f"[{name}] error from sidecar: {payload}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
