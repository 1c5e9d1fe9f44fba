#!/usr/bin/env python3
"""Sends each request target exactly as given (no client-side normalization: a raw
socket), one connection each, and prints JSON {target: status or error}.

  rawhttp.py HOST PORT TARGET...
"""
import json
import socket
import sys


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    out = {}
    for target in sys.argv[3:]:
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(("GET %s HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n" % target).encode("latin-1"))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            out[target] = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else "no response"
        except OSError as e:
            out[target] = "error: %s" % e
    print(json.dumps(out))


if __name__ == "__main__":
    main()
