#!/usr/bin/env python3
"""Test HTTP/1.1 client: sends COUNT requests to URL over keep-alive connections and
reports, as JSON, the status codes, which backend answered (X-Backend), each request's
latency, and transport failures.

  httpclient.py URL COUNT [-H name:value]... [-X METHOD] [--data BYTES] [--new-connection]
"""
import argparse
import collections
import http.client
import json
import time
from urllib.parse import urlsplit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("count", type=int)
    ap.add_argument("-H", action="append", default=[])
    ap.add_argument("-X", default="GET")
    ap.add_argument("--data", type=int, default=0)
    ap.add_argument("--new-connection", action="store_true")
    a = ap.parse_args()
    u = urlsplit(a.url)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    headers = dict(h.split(":", 1) for h in a.H)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    body = b"x" * a.data if a.data else None
    out = {"statuses": collections.Counter(), "backends": collections.Counter(), "latencies": [], "failures": [], "bodies": []}
    conn = None
    for i in range(a.count):
        if conn is None or a.new_connection:
            if conn:
                conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        start = time.time()
        try:
            conn.request(a.X, path.replace("{i}", str(i)), body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            out["latencies"].append(time.time() - start)
            out["statuses"][str(r.status)] += 1
            out["backends"][r.getheader("X-Backend") or "-"] += 1
            if len(out["bodies"]) < 5:
                out["bodies"].append({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()}, "body": data.decode(errors="replace")})
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            out["latencies"].append(time.time() - start)
            out["failures"].append("%s: %s" % (type(e).__name__, e))
            conn.close()
            conn = None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
