#!/usr/bin/env python3
"""A mesh peer built on aiortc, an independent WebRTC stack, for interop
tests against our registry and sidecar (docs/PROTOCOL.md §4, §5).

It exchanges an API key for a JWT, joins the signaling WebSocket, registers
and then either offers to a target peer (--role offer, as a newcomer does)
or answers the first offer it receives (--role answer). Once the DataChannel
is open it sends a MeshMessage `hello` and a mesh `ping`, expects the remote
sidecar's `pong`, echoes every other message back as `echo`, and exits 0
after a `bye`.

Progress goes to stdout, one line each, flushed, for the Rust test to await:
  registered peers=[...]   after the first peer_list
  open <ms>                DataChannel open, ms since the offer was sent/received
  got pong <request_id>    the remote sidecar answered our ping
  got <type> <request_id>  any other MeshMessage (it is echoed back)
  done                     before a clean exit
Failures go to stderr and exit non-zero; everything is bounded by --timeout.
Host candidates are exactly --host (127.0.0.1 by default: aioice skips
loopback when it gathers, so gathering is patched). No STUN or TURN server
is used unless --ice-config asks the registry for its ICE servers (with the
JWT, as our sidecar does); then its turn: entries are used.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request

import aioice.ice
import websockets
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp


def say(*parts):
    print(*parts, flush=True)


def mesh(kind, request_id="", payload=None, source="py"):
    return json.dumps(
        {"type": kind, "request_id": request_id, "source_agent": source, "target_agent": "", "payload": payload}
    )


def get_token(registry, api_key):
    req = urllib.request.Request(
        f"{registry}/api/token", method="POST", headers={"X-API-Key": api_key}, data=b""
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    return body["token"], body["peer_id"]


def get_ice_servers(registry, token):
    """The registry's TURN servers (turn: URLs over UDP or TCP) as aiortc
    wants them; aioice has no TLS client, so turns: entries are left out."""
    req = urllib.request.Request(f"{registry}/api/config", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        config = json.load(resp)
    servers = []
    for entry in config.get("iceServers", []):
        urls = entry.get("urls", [])
        urls = [urls] if isinstance(urls, str) else urls
        urls = [u for u in urls if u.startswith("turn:")]
        if urls and "username" in entry:
            servers.append(RTCIceServer(urls=urls, username=entry["username"], credential=entry["credential"]))
    return servers


def parse_candidate(payload):
    """A trickled candidate as aiortc wants it; None for end of candidates."""
    line = (payload or {}).get("candidate") or ""
    if not line.strip():
        return None
    if line.startswith("a="):
        line = line[2:]
    if line.startswith("candidate:"):
        line = line.split(":", 1)[1]
    cand = candidate_from_sdp(line)
    mid = payload.get("sdpMid")
    cand.sdpMid = mid if mid else None
    cand.sdpMLineIndex = payload.get("sdpMLineIndex")
    if cand.sdpMid is None and cand.sdpMLineIndex is None:
        cand.sdpMLineIndex = 0
    return cand


class Peer:
    def __init__(self, args, ice_servers):
        self.args = args
        # An explicit list: aiortc would add Google's STUN server by default.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self.remote = None  # the remote peer_id once signaling with it started
        self.remote_set = False
        self.pending = []  # candidates received before the remote description
        self.started = None
        self.finished = asyncio.get_running_loop().create_future()
        self.got_pong = False

    def fail(self, why):
        if not self.finished.done():
            self.finished.set_exception(RuntimeError(why))

    def attach(self, channel):
        say(f"channel label={channel.label} ordered={channel.ordered} id={channel.id}")

        def on_open():
            say(f"open {(time.monotonic() - self.started) * 1000:.1f}")
            channel.send(mesh("hello", "r1", {"n": 1}))
            channel.send(mesh("ping", "p1", {"t": 1}))

        if channel.readyState == "open":
            on_open()
        else:
            channel.on("open", on_open)

        @channel.on("message")
        def on_message(data):
            if not isinstance(data, str):
                self.fail(f"binary message of {len(data)} bytes; MeshMessages are text")
                return
            try:
                msg = json.loads(data)
            except ValueError:
                self.fail(f"not JSON: {data!r}")
                return
            kind, rid = msg.get("type"), msg.get("request_id", "")
            if kind == "pong":
                say(f"got pong {rid}")
                self.got_pong = True
                return
            say(f"got {kind} {rid}")
            if kind == "ping":
                channel.send(mesh("pong", rid, msg.get("payload")))
            else:
                channel.send(mesh("echo", rid, msg))
            if kind == "bye":
                if self.got_pong and not self.finished.done():
                    self.finished.set_result(None)
                elif not self.got_pong:
                    self.fail("bye before the pong to our ping")

        @channel.on("close")
        def on_close():
            self.fail("DataChannel closed by the remote")

    async def add_candidate(self, payload):
        cand = parse_candidate(payload)
        if cand is None:
            say("trickled end-of-candidates")
        else:
            say(f"trickled candidate {cand.type} {cand.protocol} {cand.ip}:{cand.port} mid={cand.sdpMid}")
        await self.pc.addIceCandidate(cand)

    async def set_remote(self, sdp, kind):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        self.remote_set = True
        for payload in self.pending:
            await self.add_candidate(payload)
        self.pending = []

    async def run(self, ws, me):
        args = self.args

        async def send(kind, target, payload):
            await ws.send(json.dumps({"type": kind, "peer_id": me, "target_id": target, "payload": payload}))

        @self.pc.on("connectionstatechange")
        def on_state():
            say(f"connection state {self.pc.connectionState}")
            if self.pc.connectionState == "failed":
                self.fail("PeerConnection failed")

        await ws.send(json.dumps({"type": "register", "peer_id": me, "payload": {"version": 1}}))
        retries = 0
        async for raw in ws:
            frame = json.loads(raw)
            kind, sender, payload = frame.get("type"), frame.get("peer_id"), frame.get("payload")
            if kind == "peer_list":
                peers = payload.get("peers", [])
                if retries == 0 or args.target in peers:
                    say(f"registered peers={json.dumps(peers)}")
                if args.role == "offer" and self.remote is None:
                    if args.target not in peers:
                        # The target's socket may be a moment from joining
                        # the registry's hub: ask again after a registry
                        # ping/pong round trip, a bounded number of times.
                        retries += 1
                        if retries > 50:
                            raise RuntimeError(f"target {args.target} not in peer_list {peers}")
                        await ws.send(json.dumps({"type": "ping", "peer_id": me, "payload": None}))
                        continue
                    self.remote = args.target
                    channel = self.pc.createDataChannel("mesh", ordered=True)
                    self.attach(channel)
                    await self.pc.setLocalDescription(await self.pc.createOffer())
                    sdp = self.pc.localDescription.sdp
                    say(f"offer sent candidates={sdp.count('a=candidate:')}")
                    self.started = time.monotonic()
                    await send("offer", self.remote, {"sdp": sdp})
            elif kind == "pong" and sender == "registry" and self.remote is None:
                await ws.send(json.dumps({"type": "register", "peer_id": me, "payload": {"version": 1}}))
            elif kind == "offer" and args.role == "answer" and self.remote is None:
                self.remote = sender
                self.started = time.monotonic()
                say(f"offer from {sender}")
                say(f"offer candidates={payload['sdp'].count('a=candidate:')}")
                self.pc.on("datachannel", self.attach)
                await self.set_remote(payload["sdp"], "offer")
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await send("answer", sender, {"sdp": self.pc.localDescription.sdp})
                say("answer sent")
            elif kind == "answer" and sender == self.remote:
                say(f"answer from {sender}")
                say(f"answer candidates={payload['sdp'].count('a=candidate:')}")
                await self.set_remote(payload["sdp"], "answer")
            elif kind == "ice_candidate" and sender == self.remote:
                if self.remote_set:
                    await self.add_candidate(payload)
                else:
                    self.pending.append(payload)
            elif kind == "error":
                say(f"registry error {json.dumps(payload)}")
            elif kind == "peer_left" and (payload or {}).get("peer_id") == self.remote:
                raise RuntimeError(f"{self.remote} left")
        raise RuntimeError("signaling WebSocket closed")


async def main(args):
    token, me = await asyncio.to_thread(get_token, args.registry, args.api_key)
    ice_servers = []
    if args.ice_config:
        ice_servers = await asyncio.to_thread(get_ice_servers, args.registry, token)
        say(f"ice servers {json.dumps([u for s in ice_servers for u in s.urls])}")
    ws_url = args.registry.replace("http://", "ws://", 1) + "/ws?token=" + token
    peer = Peer(args, ice_servers)
    try:
        async with websockets.connect(ws_url, open_timeout=10) as ws:
            say(f"signaling connected as {me}")
            signaling = asyncio.create_task(peer.run(ws, me))
            done, _ = await asyncio.wait({signaling, peer.finished}, return_when=asyncio.FIRST_COMPLETED)
            if peer.finished in done:
                signaling.cancel()
                peer.finished.result()
            else:
                signaling.result()
    finally:
        await peer.pc.close()
    say("done")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--role", choices=["offer", "answer"], required=True)
    parser.add_argument("--target", help="peer_id to offer to (--role offer)")
    parser.add_argument("--timeout", type=float, default=30.0, help="overall limit in seconds")
    parser.add_argument("--host", default="127.0.0.1", help="the one host candidate address")
    parser.add_argument("--ice-config", action="store_true", help="use the registry's TURN servers")
    args = parser.parse_args()
    # aioice skips loopback when it gathers host addresses: hand it exactly
    # the one to use.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.host]
    if args.role == "offer" and not args.target:
        parser.error("--role offer needs --target")
    try:
        asyncio.run(asyncio.wait_for(main(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"aiortc_peer: FAILED: no clean finish within {args.timeout} s", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - report anything and fail
        print(f"aiortc_peer: FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
