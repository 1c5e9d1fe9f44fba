#!/usr/bin/python3
"""Fixed-rate load for the soak (scripts/soak): one kind of traffic to one target, as a
well-behaved client of that kind does it, counting every request that fails.

  soakload.py KIND HOST:PORT RATE SECONDS [PATH]     (PATH: for http1, default /soak)

KIND: http1 (keep-alive HTTP/1.1; a new connection after `Connection: close`), http2
(h2c, one connection, a request at a time; after a GOAWAY the request in flight finishes
— or, past the GOAWAY's last stream, is retried on a new connection, as RFC 9113 §6.8
allows — and the next request opens a new connection), grpc (grpcio unary calls on one
channel), tcp (a connection per exchange: a line out, the backend's name back).

Prints a JSON line every 10 s ({"t", "ok", "failed"}, cumulative) and a last one with
the first errors. Run with Debian's /usr/bin/python3 (grpcio, h2).
"""
import http.client
import json
import socket
import sys
import time


def http1(host, port, path="/soak"):
    state = {"conn": None}

    def once():
        if state["conn"] is None:
            state["conn"] = http.client.HTTPConnection(host, port, timeout=10)
        c = state["conn"]
        try:
            c.request("GET", path)
            r = c.getresponse()
            r.read()
        except Exception:
            c.close()
            state["conn"] = None
            raise
        if r.getheader("connection", "").lower() == "close":
            c.close()
            state["conn"] = None
        if r.status != 200:
            raise RuntimeError("status %d" % r.status)
    return once


def http2(host, port):
    import h2.config
    import h2.connection
    import h2.events
    # python-h2 4.1 takes any GOAWAY for the end of the connection and refuses every
    # later frame, also those of the streams the GOAWAY lets finish (RFC 9113 §6.8), as
    # clients built on nghttp2, Go or gRPC let them: here the connection stays open for
    # them (this client opens no stream on it after a GOAWAY).
    S, I = h2.connection.ConnectionState, h2.connection.ConnectionInputs
    h2.connection.H2ConnectionStateMachine._transitions[(S.CLIENT_OPEN, I.RECV_GOAWAY)] = (None, S.CLIENT_OPEN)

    state = {"sock": None, "conn": None, "goaway": None}

    def connect():
        s = socket.create_connection((host, port), timeout=10)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        s.sendall(c.data_to_send())
        state.update(sock=s, conn=c, goaway=None)

    def drop():
        if state["sock"]:
            state["sock"].close()
        state.update(sock=None, conn=None, goaway=None)

    def attempt():
        """The status, or None if the stream was not processed (past a GOAWAY)."""
        if state["conn"] is None or state["goaway"] is not None:
            drop()
            connect()
        s, c = state["sock"], state["conn"]
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", host), (":path", "/soak")], end_stream=True)
        s.sendall(c.data_to_send())
        status, ended = None, False
        while True:
            data = s.recv(65536)
            if not data:
                goaway = state["goaway"]
                drop()
                if goaway is not None and sid > goaway:
                    return None
                raise RuntimeError("connection closed with stream %d open" % sid)
            for e in c.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    status = dict(e.headers)[":status"]
                elif isinstance(e, h2.events.DataReceived):
                    c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif isinstance(e, h2.events.ConnectionTerminated):
                    state["goaway"] = e.last_stream_id
                elif isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                    raise RuntimeError("stream reset: %s" % e.error_code)
                elif isinstance(e, h2.events.StreamEnded) and e.stream_id == sid:
                    ended = True
            s.sendall(c.data_to_send())
            if ended:
                return status
            if state["goaway"] is not None and sid > state["goaway"]:
                return None

    def once():
        try:
            status = attempt()
            if status is None:  # not processed: once more, on a new connection
                status = attempt()
        except Exception:
            drop()
            raise
        if status != "200":
            raise RuntimeError("status %s" % status)
    return once


def grpc_unary(host, port):
    import grpc
    ch = grpc.insecure_channel("%s:%d" % (host, port))
    call = ch.unary_unary("/weft.Test/Unary", lambda x: x, lambda x: x)

    def once():
        call(b"", timeout=10)
    return once


def tcp(host, port):
    def once():
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"ping\n")
            got = b""
            while not got.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("closed after %r" % got)
                got += chunk
    return once


def main():
    kind, target, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    host, port = target.rsplit(":", 1)
    once = {"http1": http1, "http2": http2, "grpc": grpc_unary, "tcp": tcp}[kind](host, int(port), *sys.argv[5:6])
    ok = failed = 0
    errors = []
    start = time.time()
    next_report = start + 10
    i = 0
    while time.time() - start < seconds:
        # Fixed rate: the i-th request is due at start + i/rate, whatever the last took.
        due = start + i / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        i += 1
        try:
            once()
            ok += 1
        except Exception as e:  # every failure counts, whatever it was
            failed += 1
            if len(errors) < 5:
                errors.append("%.1f s: %s: %s" % (time.time() - start, type(e).__name__, e))
        if time.time() >= next_report:
            print(json.dumps({"t": round(time.time() - start), "ok": ok, "failed": failed}), flush=True)
            next_report += 10
    print(json.dumps({"t": round(time.time() - start), "ok": ok, "failed": failed, "errors": errors, "done": True}), flush=True)


if __name__ == "__main__":
    main()
