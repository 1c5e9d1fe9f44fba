#!/usr/bin/env python3
"""Test client: opens connections to ADDR:PORT and reports, as JSON, which backend
answered each, what getpeername() said, and every failure.

  client.py tcp ADDR PORT COUNT [--bind SRC] [--mark M] [--timeout S]
                                         (--mark: SO_MARK, what a process with
                                         CAP_NET_ADMIN can set; --timeout: per connection)
  client.py udp ADDR PORT COUNT [--connected]
  client.py loop ADDR PORT STOPFILE      connect repeatedly until STOPFILE exists
  client.py hold ADDR PORT WANT OUTFILE  keep one connection to backend WANT open; each
                                         line written to stdin is sent, answers go to OUTFILE
"""
import collections
import json
import os
import socket
import sys
import time


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_once(addr, port, bind=None, mark=None, timeout=5):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if bind:
            s.bind((bind, 0))
        s.connect((addr, port))
        peer = s.getpeername()[:2]
        s.sendall(b"hello\n")
        name = s.recv(100).decode().strip()
        return name, "%s:%d" % peer
    finally:
        s.close()


def main():
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = {"backends": collections.Counter(), "peers": collections.Counter(), "failures": []}
    if mode == "tcp":
        count = int(sys.argv[4])
        opt = lambda name: sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None
        mark = int(opt("--mark"), 0) if opt("--mark") else None
        timeout = float(opt("--timeout") or 5)
        for _ in range(count):
            try:
                name, peer = tcp_once(addr, port, opt("--bind"), mark, timeout)
                out["backends"][name] += 1
                out["peers"][peer] += 1
            except OSError as e:
                out["failures"].append(str(e))
    elif mode == "udp":
        count = int(sys.argv[4])
        for i in range(count):
            s = socket.socket(family(addr), socket.SOCK_DGRAM)
            s.settimeout(3)
            try:
                if "--connected" in sys.argv:
                    s.connect((addr, port))
                    s.send(b"ping%d" % i)
                    data = s.recv(1000)
                    src = s.getpeername()[:2]
                else:
                    s.sendto(b"ping%d" % i, (addr, port))
                    data, src = s.recvfrom(1000)
                    src = src[:2]
                name, _, echo = data.decode().partition(":")
                if echo != "ping%d" % i:
                    out["failures"].append("bad echo %r" % data)
                out["backends"][name] += 1
                out["peers"]["%s:%d" % src] += 1
            except OSError as e:
                out["failures"].append(str(e))
            finally:
                s.close()
    elif mode == "loop":
        stop = sys.argv[4]
        deadline = time.time() + 120
        while not os.path.exists(stop) and time.time() < deadline:
            try:
                name, _ = tcp_once(addr, port)
                out["backends"][name] += 1
            except OSError as e:
                out["failures"].append("%.3f %s" % (time.time(), e))
            time.sleep(0.002)
    elif mode == "hold":
        want, outfile = sys.argv[4], sys.argv[5]
        for _ in range(500):
            s = socket.create_connection((addr, port), timeout=5)
            s.sendall(b"HOLD\n")
            if s.recv(100).decode().strip() == want:
                break
            s.close()
        else:
            print(json.dumps({"error": "never reached " + want}), flush=True)
            return
        print(json.dumps({"held": want}), flush=True)
        with open(outfile, "a") as f:
            for line in sys.stdin:
                try:
                    s.sendall(line.encode())
                    answer = s.recv(100).decode()
                    f.write(answer or "error closed by the peer\n")
                except OSError as e:
                    f.write("error %s\n" % e)
                f.flush()
        s.close()
        return
    print(json.dumps(out))


if __name__ == "__main__":
    main()
