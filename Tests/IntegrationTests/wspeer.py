#!/usr/bin/env python3
"""WebSocket test peer on raw sockets (only the opening handshake is WebSocket; after
the 101 the bytes are opaque to the proxy, so the test uses plain bytes).

  wspeer.py server NAME ADDR PORT LOGFILE
      answers a handshake with 101 and a greeting sent at once ("hello from NAME\\n"),
      then echoes every byte upper-cased; logs each handshake's headers to LOGFILE
  wspeer.py client HOST PORT PATH
      handshakes, reads the greeting, sends "ping-1\\n", reads the echo; prints JSON
"""
import base64
import hashlib
import json
import socket
import sys
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError("closed during the handshake")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for l in lines[1:]:
        k, v = l.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, rest


def accept_key(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def serve(conn, name, log):
    try:
        line, headers, rest = read_head(conn)
        log.write(json.dumps({"line": line, "headers": headers}) + "\n")
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\nhello from %s\n" % (accept_key(headers["sec-websocket-key"]), name)).encode())
        if rest:
            conn.sendall(rest.upper())
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data.upper())
    except (OSError, EOFError, KeyError):
        pass
    finally:
        conn.close()


def server(name, addr, port, logfile):
    log = open(logfile, "a", buffering=1)
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, name, log), daemon=True).start()


def client(host, port, path):
    s = socket.create_connection((host, int(port)), timeout=5)
    key = base64.b64encode(b"weft-websocket-k").decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, key)).encode())
    line, headers, rest = read_head(s)
    out = {"status": line, "accept_ok": headers.get("sec-websocket-accept") == accept_key(key),
           "upgrade": headers.get("upgrade", ""), "connection": headers.get("connection", "")}
    data = rest
    while b"\n" not in data:
        data += s.recv(4096)
    out["greeting"], data = data.split(b"\n", 1)[0].decode(), data.split(b"\n", 1)[1]
    s.sendall(b"ping-1\n")
    while b"\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    out["echo"] = data.decode().strip()
    s.close()
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(*sys.argv[2:6])
    else:
        client(*sys.argv[2:5])
