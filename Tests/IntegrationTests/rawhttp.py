#!/usr/bin/env python3
"""Sends each request exactly as given (no client-side normalization: a raw socket), one
connection each, and prints JSON {argument: status, "no response" or an error}.

  rawhttp.py HOST PORT TARGET...         GET TARGET HTTP/1.1, Host: web
  rawhttp.py --raw HOST PORT REQUEST...  each REQUEST whole, with Python escapes
                                         (\\r\\n, \\x00, \\t) spelled out
"""
import codecs
import json
import socket
import sys


def send(host, port, payload):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else "no response"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error: %s" % e


def main():
    args = sys.argv[1:]
    raw = args[0] == "--raw"
    if raw:
        args = args[1:]
    host, port = args[0], int(args[1])
    out = {}
    for a in args[2:]:
        if raw:
            payload = codecs.decode(a, "unicode_escape").encode("latin-1")
        else:
            payload = ("GET %s HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n" % a).encode("latin-1")
        out[a] = send(host, port, payload)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
