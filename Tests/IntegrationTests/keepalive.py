#!/usr/bin/env python3
"""Keeps one HTTP/1.1 connection open and sends a GET for each path read from stdin on
it, printing each status (or "closed" once the connection is gone) as a line.

  keepalive.py HOST PORT
"""
import http.client
import sys


def main():
    conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
    conn.connect()
    for line in sys.stdin:
        try:
            conn.request("GET", line.strip(), headers={"Host": "web"})
            r = conn.getresponse()
            r.read()
            print(r.status, flush=True)
        except (OSError, http.client.HTTPException):
            print("closed", flush=True)
            return


if __name__ == "__main__":
    main()
