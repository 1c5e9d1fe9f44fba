#!/usr/bin/env python3
"""Test HTTP/1.1 backend (keep-alive, threaded). Answers every request with JSON naming
itself and echoing what it received (a body by Content-Length or chunked), and records
each request as a JSON line in LOGFILE.

Behaviour is chosen per request by query parameters, so one backend serves every test:
  status=N          answer with status N
  delay=MS          wait MS milliseconds before answering (with delay_on=NAME, only
                    on the backend called NAME)
  fail_first=N      the first N requests carrying the same `key=` get 503 (with
                    fail_on=NAME, only on the backend called NAME)
  drop_first=N      the first N requests with the same `key=` get the connection closed
                    without a response (a reset after the request reached the backend)

Usage: httpbackend.py NAME ADDRESS PORT LOGFILE
"""
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NAME = sys.argv[1]
LOG = open(sys.argv[4], "a", buffering=1)
LOCK = threading.Lock()
SEEN = {}


def count(kind, key):
    with LOCK:
        SEEN[(kind, key)] = SEEN.get((kind, key), 0) + 1
        return SEEN[(kind, key)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without NODELAY, Nagle and the client's
        # delayed ACK add 40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def parse_request(self):
        # Lenient, as many servers are: empty lines before the request line are skipped
        # (RFC 9112 §2.2) and the method's case is ignored. The mesh must not count on
        # the workload refusing what its own parser refused.
        while self.raw_requestline in (b"\r\n", b"\n"):
            self.raw_requestline = self.rfile.readline(65537)
        ok = super().parse_request()
        if ok:
            self.command = self.command.upper()
        return ok

    def handle_any(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        rec = {"name": NAME, "method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
               "body_len": len(body), "body": body[:64].decode("latin-1"), "time": time.time()}
        LOG.write(json.dumps(rec) + "\n")
        key = q.get("key", "")
        if "drop_first" in q and count("drop", key) <= int(q["drop_first"]):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if "delay" in q and q.get("delay_on", NAME) == NAME:
            time.sleep(int(q["delay"]) / 1000.0)
        status = int(q.get("status", 200))
        if "fail_first" in q and q.get("fail_on", NAME) == NAME and count("fail", key) <= int(q["fail_first"]):
            status = 503
        out = json.dumps(rec).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Backend", NAME)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def read_chunked(self):
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, addr, port):
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        super().__init__((addr, port), Handler)


if __name__ == "__main__":
    srv = Server(sys.argv[2], int(sys.argv[3]))
    print("ready", flush=True)
    srv.serve_forever()
