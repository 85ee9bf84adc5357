"""The baseline of the WebSocket relay benchmark (conformance/benches/ws_relay.rs).

A minimal relay on the `websockets` asyncio server API that does the fan-out the
ferry relay does (spec/ws-relay.md WS-6, WS-8, WS-15):

- peers open a WebSocket to ``/v1?relayId=R&peerId=P``; other paths get 404, a
  missing or empty id gets 400;
- a data message from a peer goes to every other peer of its room, unchanged and
  with the same type (text stays text, binary stays binary), via
  ``websockets.broadcast`` (one synchronous write per receiver, no per-receiver
  coroutine or await);
- a text ``ping`` gets a text ``pong`` back; ``ping``/``pong`` texts are not relayed;
- a newer connection with the same peerId replaces the older one (closed 4001);
- a peer leaves its room when its connection ends; an empty room is forgotten.

Left out, because the benchmark does not exercise them: the admin secret (WS-3),
allowed origins (WS-4), targeted messages (WS-7), the relay's text ``ping`` timer
and staleness check (WS-9), and the slow-consumer limit (WS-13). Keepalive ping
frames are off (``ping_interval=None``): the benchmark client does not answer
them, and a run lasts well under the library's 20 s default. Compression is not
negotiated because the client offers none. Message size cap: 1 MiB, as ferry.

Usage: ``python ws_baseline_relay.py [PORT]`` (default 0, any free port). Prints
``listening on PORT`` once bound, then serves on 127.0.0.1 until killed.
"""

import asyncio
import http
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

# relayId -> {peerId: connection}
rooms = {}


def ids(path):
    url = urlsplit(path)
    query = parse_qs(url.query)
    relay_id = query.get("relayId", [""])[0]
    peer_id = query.get("peerId", [""])[0]
    return url.path, relay_id, peer_id


def process_request(connection, request):
    path, relay_id, peer_id = ids(request.path)
    if path != "/v1":
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
    if not relay_id:
        return connection.respond(http.HTTPStatus.BAD_REQUEST, "missing relayId\n")
    if not peer_id:
        return connection.respond(http.HTTPStatus.BAD_REQUEST, "missing peerId\n")
    return None


async def handler(ws):
    _, relay_id, peer_id = ids(ws.request.path)
    room = rooms.setdefault(relay_id, {})
    older = room.get(peer_id)
    room[peer_id] = ws
    if older is not None:
        await older.close(4001, "replaced by a newer connection")
    try:
        async for message in ws:
            if isinstance(message, str) and message in ("ping", "pong"):
                if message == "ping":
                    await ws.send("pong")
                continue
            broadcast([c for c in room.values() if c is not ws], message)
    except ConnectionClosed:
        pass  # the benchmark's peers just hang up; ferry does not log that either
    finally:
        if room.get(peer_id) is ws:
            del room[peer_id]
            if not room:
                rooms.pop(relay_id, None)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        ping_interval=None,
        max_size=1 << 20,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"listening on {bound}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
