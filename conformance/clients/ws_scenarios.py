#!/usr/bin/env python3
"""WebSocket relay scenarios (spec/ws-relay.md) driven by a real third-party
client, Python's `websockets` library. Exits 0 when every scenario passes; on the
first failure prints which requirement failed and exits 1.

    ws_scenarios.py BASE_URL [--secret S] [--origin O --bad-origin B] [--cafile PEM]

BASE_URL is e.g. ws://127.0.0.1:42102. With --secret, the relay must have been
started with that ADMIN_SECRET; with --origin, with ALLOWED_ORIGINS=O. With
--cafile (for a wss:// BASE_URL), the server certificate is verified against PEM.
"""

import argparse
import contextlib
import json
import ssl
import sys

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

QUIET = 0.3  # seconds of silence that count as "nothing arrives"
TLS = {}  # connect()'s ssl= argument, set by --cafile


def fail(req, message):
    print(f"FAIL {req}: {message}", file=sys.stderr)
    sys.exit(1)


class Peers:
    def __init__(self, base, secret=None, origin=None):
        self.base, self.secret, self.origin = base, secret, origin
        self.open = contextlib.ExitStack()

    def join(self, relay, peer):
        return self.open.enter_context(
            connect(
                f"{self.base}/v1?relayId={relay}&peerId={peer}",
                subprotocols=[self.secret] if self.secret else None,
                origin=self.origin,
                open_timeout=5,
                **TLS,
            )
        )

    def close(self):
        self.open.close()


def expect(ws, want, req):
    try:
        got = ws.recv(timeout=5)
    except TimeoutError:
        fail(req, f"expected {want!r}, got nothing")
    if got != want:
        fail(req, f"expected {want!r}, got {got!r}")


def expect_silence(ws, req):
    try:
        got = ws.recv(timeout=QUIET)
    except TimeoutError:
        return
    fail(req, f"expected nothing, got {got!r}")


def expect_status(base, path, status, req, **kwargs):
    try:
        with connect(base + path, open_timeout=5, **TLS, **kwargs):
            pass
    except InvalidStatus as e:
        if e.response.status_code != status:
            fail(req, f"{path}: expected HTTP {status}, got {e.response.status_code}")
        return
    fail(req, f"{path}: expected HTTP {status}, the upgrade succeeded")


def rooms(base, secret, origin):
    peers = Peers(base, secret, origin)
    a1, a2 = peers.join("room-a", "a1"), peers.join("room-a", "a2")
    b1 = peers.join("room-b", "b1")
    a3 = peers.join("room-a", "a3")
    if secret and a1.subprotocol != secret:
        fail("WS-3", f"the secret is not echoed: {a1.subprotocol!r}")

    a1.send("hello room a")  # WS-6
    expect(a2, "hello room a", "WS-6")
    expect(a3, "hello room a", "WS-6")
    expect_silence(a1, "WS-6 (never back to the sender)")
    expect_silence(b1, "WS-6 (never to another room)")

    a2.send(b"\x00\x01binary")  # WS-6: binary stays binary
    expect(a1, b"\x00\x01binary", "WS-6")
    expect(a3, b"\x00\x01binary", "WS-6")

    targeted = json.dumps({"targetPeerId": "a3", "body": "for a3 only"})  # WS-7
    a1.send(targeted)
    expect(a3, targeted, "WS-7")
    expect_silence(a2, "WS-7 (targeted goes to one peer)")
    a1.send(json.dumps({"targetPeerId": "nobody"}))
    expect_silence(a2, "WS-7 (unknown target is not relayed)")
    expect_silence(a3, "WS-7 (unknown target is not relayed)")

    a1.send("ping")  # WS-8
    expect(a1, "pong", "WS-8")
    expect_silence(a2, "WS-8 (ping is never relayed)")
    b1.send("room b is alone")
    expect_silence(a1, "WS-6 (rooms are isolated)")
    peers.close()


def handshakes(base, secret, origin, bad_origin):
    kw = {"subprotocols": [secret]} if secret else {}
    if origin:
        kw["origin"] = origin
    expect_status(base, "/v2?relayId=r&peerId=p", 404, "WS-1", **kw)
    expect_status(base, "/v1?relayId=r", 400, "WS-2", **kw)
    expect_status(base, "/v1?relayId=&peerId=p", 400, "WS-2", **kw)
    if secret:
        no_secret = {"origin": origin} if origin else {}
        expect_status(base, "/v1?relayId=r&peerId=p", 401, "WS-3", **no_secret)
        wrong = dict(kw, subprotocols=["not-the-secret"])
        expect_status(base, "/v1?relayId=r&peerId=p", 401, "WS-3", **wrong)
    if origin:
        expect_status(base, "/v1?relayId=r&peerId=p", 403, "WS-4", **dict(kw, origin=bad_origin))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--secret")
    parser.add_argument("--origin")
    parser.add_argument("--bad-origin", default="http://evil.example")
    parser.add_argument("--cafile")
    args = parser.parse_args()
    if args.cafile:
        TLS["ssl"] = ssl.create_default_context(cafile=args.cafile)
    handshakes(args.base, args.secret, args.origin, args.bad_origin)
    rooms(args.base, args.secret, args.origin)
    print("ok")


if __name__ == "__main__":
    main()
