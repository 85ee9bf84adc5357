#!/usr/bin/env python3
"""The WebSocket relay (spec/ws-relay.md) driven by a real browser: headless
Chromium runs browser_page.html, whose script uses the browser's own WebSocket
the way the seed shows (`new WebSocket(url, [secret])`). Exits 0 when the page's
peers saw what the spec says; else prints why and exits 1.

    browser_ws.py RELAY_URL [--secret S] [--page-port P] [--origin-check]
                  [--chromium PATH]

RELAY_URL is e.g. ws://127.0.0.1:42102. The page is served from
http://127.0.0.1:P (P free, chosen here when not given), so that is the
browser's Origin. With --secret the relay must have ADMIN_SECRET=S (and the page
also checks that a wrong or missing secret is refused). With --origin-check the
relay must have ALLOWED_ORIGINS=http://127.0.0.1:P, and a page from another
origin must be refused even with the right secret.

Chromium is driven over its DevTools protocol with the `websockets` library:
no browser-automation package is needed.
"""

import argparse
import functools
import http.server
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from websockets.sync.client import connect

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = "browser_page.html"
# One deadline for the whole run (Chromium's start, then each page), generous for a
# loaded 2-core machine (10 s+ seen), yet under the 60 s the Rust test allows, so
# the cleanup here runs before it would kill this script.
BUDGET = 48.0
T0 = time.monotonic()
DEADLINE = T0 + BUDGET


def left():
    """Seconds left of the run's budget."""
    return DEADLINE - time.monotonic()


def log(message):
    """A progress line with the time since start (shown when the test fails)."""
    print(f"[{time.monotonic() - T0:6.2f}s] {message}", flush=True)


# The flags this machine needs (/work/.library/env/machines/rust.md).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


class Failure(Exception):
    pass


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def serve_page(port):
    """Serve this folder on 127.0.0.1:port in a thread; returns the server."""
    handler = functools.partial(QuietHandler, directory=HERE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def die_with_parent():
    """In the Chromium child: get SIGKILL if this script dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's WebSocket."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method, params=None, session=None, timeout=15.0):
        timeout = max(0.1, min(timeout, left()))
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure(f"DevTools {method}: no answer within {timeout:.1f} s")
            try:
                reply = json.loads(self.ws.recv(timeout=remaining))
            except TimeoutError:
                continue  # the deadline check above reports it
            if reply.get("id") != msg_id:
                continue  # an event, or an answer to nothing we wait for
            if "error" in reply:
                raise Failure(f"DevTools {method}: {reply['error']}")
            return reply.get("result", {})


def devtools_url(profile, chromium, log_path):
    """Wait for Chromium's DevToolsActivePort; the browser's DevTools ws:// URL."""
    active = os.path.join(profile, "DevToolsActivePort")
    while left() > 0:
        if chromium.poll() is not None:
            raise Failure(f"Chromium exited ({chromium.returncode}) at start:\n{tail(log_path)}")
        try:
            with open(active) as f:
                lines = f.read().split("\n")
            if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise Failure(f"no {active} within {BUDGET} s:\n{tail(log_path)}")


def tail(path, lines=30):
    """The end of Chromium's log, without its D-Bus noise (there is no bus here)."""
    try:
        with open(path, errors="replace") as f:
            return "".join([line for line in f if "dbus" not in line][-lines:])
    except OSError:
        return ""


def run_page(devtools, page_url):
    """Open page_url in a new tab; poll window.result; return it parsed."""
    target = devtools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = devtools.call(
        "Target.attachToTarget", {"targetId": target, "flatten": True}
    )["sessionId"]
    devtools.call("Page.navigate", {"url": page_url}, session=session)
    try:
        while left() > 0:
            value = devtools.call(
                "Runtime.evaluate",
                {
                    "expression": "window.result === undefined ? null : JSON.stringify(window.result)",
                    "returnByValue": True,
                },
                session=session,
            )
            got = value.get("result", {}).get("value")
            if got is not None:
                return json.loads(got)
            time.sleep(0.1)
        raise Failure(f"window.result not set within the {BUDGET} s budget at {page_url}")
    finally:
        try:
            devtools.call("Target.closeTarget", {"targetId": target})
        except Exception:
            pass


def page_url(port, relay, secret, mode):
    query = {"relay": relay, "mode": mode}
    if secret:
        query["secret"] = secret
    return f"http://127.0.0.1:{port}/{PAGE}?{urllib.parse.urlencode(query)}"


def check_main(result, secret, origin):
    if "error" in result:
        raise Failure(f"the page failed: {result['error']}")
    if result.get("origin") != origin:
        raise Failure(f"page origin {result.get('origin')!r}, expected {origin!r}")
    hello, targeted = result["sent"]["hello"], result["sent"]["targeted"]
    p1, p2, p3 = result["p1"], result["p2"], result["p3"]
    if hello not in p2:
        raise Failure(f"WS-6: p2 did not get p1's text; p2 got {p2}")
    if targeted not in p1:
        raise Failure(f"WS-7: p1 did not get p2's targeted message; p1 got {p1}")
    if "pong" not in p1:
        raise Failure(f"WS-8: p1 did not get 'pong' for its 'ping'; p1 got {p1}")
    if hello in p1:
        raise Failure(f"WS-6: p1 got its own message back; p1 got {p1}")
    if p3:
        raise Failure(f"WS-6: p3 (another room) heard {p3}")
    if p1 != [targeted, "pong"]:
        raise Failure(f"p1 got {p1}, expected exactly {[targeted, 'pong']}")
    if p2 != [hello]:
        raise Failure(f"WS-7/WS-8: p2 got {p2}, expected exactly {[hello]}")
    if secret:
        for case in ("wrongSecret", "noSecret"):
            if result[case]["opened"]:
                raise Failure(f"WS-3: {case}: the relay accepted the connection")


def check_foreign(result):
    if "error" in result:
        raise Failure(f"the foreign page failed: {result['error']}")
    if result["foreign"]["opened"]:
        raise Failure(f"WS-4: a page from {result['origin']} (not allowed) was accepted")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("relay", help="the relay's base URL, e.g. ws://127.0.0.1:42102")
    parser.add_argument("--secret", help="the relay's ADMIN_SECRET")
    parser.add_argument("--page-port", type=int, default=0, help="port to serve the page on")
    parser.add_argument(
        "--origin-check",
        action="store_true",
        help="the relay allows only http://127.0.0.1:PAGE_PORT; check another origin is refused",
    )
    parser.add_argument(
        "--chromium", default=os.environ.get("FERRY_CHROMIUM", "/usr/bin/chromium")
    )
    args = parser.parse_args()
    relay = args.relay.rstrip("/")

    if not (os.path.isfile(args.chromium) and os.access(args.chromium, os.X_OK)):
        print(f"FAIL: no Chromium at {args.chromium} (apt-get install chromium, or set FERRY_CHROMIUM)")
        return 1

    # SIGTERM (the Rust test's timeout) unwinds through the cleanup below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"FAIL: got signal {signum}"))
    servers, procs = [], []
    profile = tempfile.mkdtemp(prefix="ferry-chromium-")
    try:
        return drive(args, relay, profile, servers, procs)
    except Failure as e:
        log(f"FAIL {e}")
        return 1
    finally:
        for chromium in procs:
            try:
                os.killpg(chromium.pid, signal.SIGKILL)  # the browser and its children
            except ProcessLookupError:
                pass
            chromium.wait()
        for server in servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(profile, ignore_errors=True)


def drive(args, relay, profile, servers, procs):
    servers.append(serve_page(args.page_port))
    port = servers[0].server_address[1]
    origin = f"http://127.0.0.1:{port}"
    log_path = os.path.join(profile, "chromium.log")
    with open(log_path, "wb") as chromium_log:
        procs.append(
            subprocess.Popen(
                [args.chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=chromium_log,
                stderr=chromium_log,
                start_new_session=True,  # its own process group, killed as one
                preexec_fn=die_with_parent,
            )
        )
    log(f"page on {origin}; Chromium started")
    url = devtools_url(profile, procs[0], log_path)
    log(f"DevTools at {url}")
    with connect(url, max_size=None, open_timeout=max(1.0, left())) as ws:
        devtools = DevTools(ws)
        try:
            result = run_page(devtools, page_url(port, relay, args.secret, "main"))
            log("main page done")
            print(json.dumps(result, indent=2))
            check_main(result, args.secret, origin)
            if args.origin_check:
                servers.append(serve_page(0))
                other = servers[1].server_address[1]
                result = run_page(devtools, page_url(other, relay, args.secret, "foreign"))
                log("foreign page done")
                print(json.dumps(result, indent=2))
                check_foreign(result)
        except Failure as e:
            raise Failure(f"{e}\nChromium's log (tail):\n{tail(log_path)}") from None
    log("ok: the browser's WebSocket peers got what the spec says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
