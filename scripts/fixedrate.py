#!/usr/bin/python3
"""Fixed-rate (open-loop) HTTP load for scripts/bench: RATE requests a second for SECONDS,
on CONNS keep-alive HTTP/1.1 connections or one HTTP/2 connection (prior knowledge), and
the latency of each measured from the moment it was due to be sent — so time a request
spends waiting behind a slow one counts, as in wrk2 and fortio (no coordinated omission).
The first second is warm-up and not counted. Debian's h2load (1.52) has no --rps, hence
this.

usage: fixedrate.py h1|h2 HOST PORT PATH RATE SECONDS [CONNS]
prints one JSON object: sent, done, errors (error_kinds: how many of each), p50_ms,
p90_ms, p99_ms, max_ms
"""
import collections
import json
import selectors
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events

proto, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rate, seconds = float(sys.argv[5]), float(sys.argv[6])
conns = int(sys.argv[7]) if len(sys.argv) > 7 else 16
WARMUP = 1.0

sel = selectors.DefaultSelector()
latencies = []
errors = 0
reasons = {}


def error(kind, n=1):
    global errors
    errors += n
    reasons[kind] = reasons.get(kind, 0) + n
start = time.monotonic()
end = start + WARMUP + seconds
interval = 1.0 / rate


def record(due, now):
    if due >= start + WARMUP:
        latencies.append(now - due)


def connect():
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


def run_h1():
    """Each connection carries one request at a time; requests due while every
    connection is busy wait in order (their latency keeps counting). A connection the
    server closes while idle is counted and opened again."""
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: weft-fixedrate\r\n\r\n" % (path, host)).encode()
    # Idle connections in turn (FIFO), so none sits unused for long: a proxy may close a
    # connection that has sent nothing for a while (weft: --request-header-timeout).
    idle, backlog = collections.deque(), collections.deque()
    state = {}
    for _ in range(conns):
        s = connect()
        state[s] = {"buf": b"", "due": None}
        sel.register(s, selectors.EVENT_READ)
        idle.append(s)
    due = start
    sent = 0
    while True:
        now = time.monotonic()
        while due <= now and due < end:
            backlog.append(due)
            due += interval
        while backlog and idle:
            s = idle.popleft()
            st = state[s]
            st["due"] = backlog.popleft()
            s.sendall(request)
            sent += 1
        if now >= end and len(idle) == conns:
            return sent
        if now >= end + 5:
            error("unanswered", conns - len(idle))
            return sent
        timeout = 0 if backlog and idle else max(0.0, min(due, end) - now) if due < end else 0.05
        for key, _ in sel.select(timeout):
            s = key.fileobj
            st = state[s]
            data = s.recv(65536)
            if not data:
                error("closed by the server" + (" mid-request" if st["due"] is not None else " while idle"))
                sel.unregister(s)
                if st["due"] is not None:
                    return sent
                del state[s]
                idle.remove(s)
                s = connect()
                state[s] = {"buf": b"", "due": None}
                sel.register(s, selectors.EVENT_READ)
                idle.append(s)
                continue
            st["buf"] += data
            head_end = st["buf"].find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = st["buf"][:head_end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if len(st["buf"]) < head_end + 4 + length:
                continue
            if not head.startswith("http/1.1 200"):
                error(head.split("\r\n")[0])
            st["buf"] = st["buf"][head_end + 4 + length:]
            record(st["due"], time.monotonic())
            st["due"] = None
            idle.append(s)


def run_h2():
    """Each request is a stream of one connection, opened when it is due."""
    s = connect()
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    sel.register(s, selectors.EVENT_READ)
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", host), (":path", path), ("user-agent", "weft-fixedrate")]
    open_streams = {}
    due = start
    sent = 0
    while True:
        now = time.monotonic()
        while due <= now and due < end:
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, headers, end_stream=True)
            open_streams[sid] = [due, None]
            due += interval
            sent += 1
        out = c.data_to_send()
        if out:
            s.sendall(out)
        if now >= end and not open_streams:
            return sent
        if now >= end + 5:
            error("unanswered", len(open_streams))
            return sent
        timeout = max(0.0, due - now) if due < end else 0.05
        for _ in sel.select(timeout):
            data = s.recv(65536)
            if not data:
                error("connection closed", len(open_streams))
                return sent
            for e in c.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    if dict(e.headers).get(b":status") != b"200":
                        open_streams[e.stream_id][1] = "error"
                elif isinstance(e, h2.events.DataReceived):
                    c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif isinstance(e, h2.events.StreamEnded):
                    d, bad = open_streams.pop(e.stream_id)
                    if bad:
                        error("status not 200")
                    record(d, time.monotonic())
                elif isinstance(e, h2.events.StreamReset):
                    open_streams.pop(e.stream_id, None)
                    error("stream reset")
            out = c.data_to_send()
            if out:
                s.sendall(out)


sent = run_h1() if proto == "h1" else run_h2()
lat = sorted(latencies)


def pct(q):
    return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 3) if lat else 0


print(json.dumps({"sent": sent, "done": len(lat), "errors": errors, "error_kinds": reasons, "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
                  "max_ms": round(lat[-1] * 1000, 3) if lat else 0}))
