#!/usr/bin/python3
"""Raw HTTP/2 abuse against ADDR PORT (Debian's python3-h2), reported as JSON:
  rapid_reset  open and immediately reset streams in a loop: how the server ended it
  bad_header   a request whose header value holds a NUL: what the server did
  bad_flood    300 such requests in a row: how the server ended it
  max_streams  the server's advertised SETTINGS_MAX_CONCURRENT_STREAMS
With a third argument `idle`, instead: one request, then silence; reports how the
server ended the connection and after how many seconds.
"""
import json
import socket
import sys
import time

import h2.config
import h2.exceptions
import h2.connection
import h2.events

ADDR, PORT = sys.argv[1], int(sys.argv[2])


def connect():
    s = socket.create_connection((ADDR, PORT), timeout=10)
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
                                    validate_inbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def pump(s, c, until, limit=200):
    """Reads events until `until(event)` returns a result, or the connection ends."""
    for _ in range(limit):
        try:
            data = s.recv(65535)
        except socket.timeout:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        if not data:
            return "closed"
        for e in c.receive_data(data):
            r = until(e)
            if r:
                return r
        out = c.data_to_send()
        if out:
            s.sendall(out)
    return "no answer"


def goaway_or_reset(e):
    if isinstance(e, h2.events.ConnectionTerminated):
        return "goaway:" + e.error_code.name
    if isinstance(e, h2.events.StreamReset):
        return "reset"
    if isinstance(e, h2.events.ResponseReceived):
        return "response:" + dict(e.headers).get(b":status", b"?").decode()
    return None


HEADERS = [(":method", "GET"), (":scheme", "http"), (":authority", ADDR), (":path", "/")]


def rapid_reset():
    s, c = connect()
    sid = 1
    try:
        for _ in range(1000):
            c.send_headers(sid, HEADERS, end_stream=True)
            c.reset_stream(sid)
            sid += 2
            s.sendall(c.data_to_send())
    except (BrokenPipeError, ConnectionResetError):
        pass
    except h2.exceptions.ProtocolError:
        pass

    def until(e):
        return "goaway:" + e.error_code.name if isinstance(e, h2.events.ConnectionTerminated) else None
    got = pump(s, c, until, limit=5000)
    # After its GOAWAY the server must close the connection, not leave it to the abuser.
    s.settimeout(5)
    if not got.startswith("goaway"):
        return got
    try:
        tail = pump(s, c, lambda e: None, limit=5000)
    except h2.exceptions.ProtocolError:
        tail = "open"  # the server kept sending after its GOAWAY
    return got + "," + tail


def bad_header():
    s, c = connect()
    c.send_headers(1, HEADERS + [("x-evil", "a\x00b")], end_stream=True)
    s.sendall(c.data_to_send())
    return pump(s, c, goaway_or_reset)


def bad_flood():
    s, c = connect()
    ended = []

    def until(e):
        if isinstance(e, h2.events.ConnectionTerminated):
            ended.append("goaway:" + e.error_code.name)
            return ended[0]
        return None
    sid = 1
    try:
        # In batches of 50, reading the resets between them: under the server's limit of
        # concurrent streams, so each one is refused for its header, not for the count.
        for _ in range(6):
            for _ in range(50):
                c.send_headers(sid, HEADERS + [("x-evil", "a\x00b")], end_stream=True)
                sid += 2
            s.sendall(c.data_to_send())
            s.settimeout(0.5)
            if pump(s, c, until, limit=50).startswith("goaway"):
                break
        s.settimeout(10)
        return ended[0] if ended else pump(s, c, until, limit=5000)
    except (BrokenPipeError, ConnectionResetError):
        return ended[0] if ended else "reset"
    except h2.exceptions.ProtocolError as e:
        return ended[0] if ended else "protocol error: %s" % e


def max_streams():
    s, c = connect()

    def until(e):
        if isinstance(e, h2.events.RemoteSettingsChanged):
            v = e.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            return v.new_value if v else None
        return None
    return pump(s, c, until)


def idle():
    s, c = connect()
    c.send_headers(1, HEADERS, end_stream=True)
    s.sendall(c.data_to_send())
    first = pump(s, c, goaway_or_reset)
    start = time.time()
    s.settimeout(30)
    seen = []

    def until(e):
        if isinstance(e, h2.events.ConnectionTerminated):
            seen.append("goaway:%s:%d" % (e.error_code.name, e.last_stream_id))
        return None
    end = pump(s, c, until, limit=100)
    return {"first": first, "ended": end, "events": seen, "after": round(time.time() - start, 1)}


if sys.argv[3:] == ["idle"]:
    print(json.dumps(idle()))
else:
    print(json.dumps({"rapid_reset": rapid_reset(), "bad_header": bad_header(), "bad_flood": bad_flood(), "max_streams": max_streams()}))
