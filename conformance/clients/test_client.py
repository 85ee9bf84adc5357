#!/usr/bin/env python3
"""A name relay client written from spec/name-relay.md, to prove a second
language interoperates with ferry. Usage, as in the seed:

    python3 test_client.py HOST PORT NAME
    Command > send
    Dest name > device_a
    Data > hello
    Command > recv
    b'hello'

`send` sends one frame, `recv` waits for the next delivered frame and prints its
payload; `quit` or end of input exits. A background thread sends the keep-alive
`NAME|0|` after 10 s without sending (NR-16), so an idle prompt is not closed.
"""

import socket
import sys
import threading
import time

KEEPALIVE_SECS = 10.0


class Client:
    def __init__(self, host, port, name):
        if not name or "|" in name or len(name.encode()) > 255:
            raise ValueError("name must be 1 to 255 bytes without '|'")
        self.name = name.encode()
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        self.last_tx = time.monotonic()
        self.buf = b""
        self._write(self.name + b"|")  # NR-1
        threading.Thread(target=self._keepalive, daemon=True).start()

    def _write(self, data):
        with self.lock:
            self.sock.sendall(data)
            self.last_tx = time.monotonic()

    def _keepalive(self):
        while True:
            time.sleep(1.0)
            if time.monotonic() - self.last_tx >= KEEPALIVE_SECS:
                try:
                    self._write(self.name + b"|0|")  # NR-10
                except OSError:
                    return

    def send(self, dest, data):
        dest = dest.encode()
        self._write(dest + b"|" + str(len(data)).encode() + b"|" + data)  # NR-4

    def _read_until_bar(self):
        while b"|" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("relay closed the connection")
            self.buf += chunk
        field, self.buf = self.buf.split(b"|", 1)
        return field

    def recv(self):
        """The next delivered frame (NR-6): (sender, payload)."""
        sender = self._read_until_bar()
        length = int(self._read_until_bar())
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("relay closed the connection")
            self.buf += chunk
        payload, self.buf = self.buf[:length], self.buf[length:]
        return sender, payload


def main(argv):
    if len(argv) != 4:
        print(f"usage: {argv[0]} HOST PORT NAME", file=sys.stderr)
        return 2
    client = Client(argv[1], int(argv[2]), argv[3])
    while True:
        try:
            command = input("Command > ").strip()
            if command == "send":
                dest = input("Dest name > ").strip()
                data = input("Data > ").encode()
                client.send(dest, data)
            elif command == "recv":
                _sender, payload = client.recv()
                print(payload, flush=True)
            elif command in ("quit", "exit"):
                return 0
            elif command:
                print("commands: send, recv, quit", flush=True)
        except EOFError:
            return 0
        except ConnectionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
