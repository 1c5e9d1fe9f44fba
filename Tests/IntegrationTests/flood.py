#!/usr/bin/env python3
"""Opens COUNT TCP connections from SOURCE to each TARGET (round robin), sends nothing,
holds them for HOLD seconds, and prints JSON: how many connected, and how many the server
had closed after 1 s and at the end. An unauthenticated host doing this must not be able
to exhaust the agent.

  flood.py SOURCE COUNT HOLD TARGET...     (TARGET: ADDR:PORT)
"""
import errno
import json
import resource
import select
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h
WINDOW = 256
CONNECT_TIMEOUT = 3


def closed(socks):
    """How many of `socks` the peer has closed (readable with EOF, or an error)."""
    p = select.poll()
    by_fd = {}
    for s in socks:
        p.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[s.fileno()] = s
    n = 0
    for fd, ev in p.poll(0):
        if ev & (select.POLLERR | select.POLLHUP):
            n += 1
            continue
        try:
            if by_fd[fd].recv(1, socket.MSG_PEEK) == b"":
                n += 1
        except OSError:
            n += 1
    return n


def main():
    source, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[4:]]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 1000)), hard))
    socks, failed = [], 0
    start = time.time()
    # Up to WINDOW connects in flight at once, as a real flood has them: one at a time,
    # every SYN the kernel drops while the agent's accept queue is full costs the whole
    # flood the 1 s retransmit, and the run's length follows the machine's speed.
    pending, poll, nxt = {}, select.poll(), 0
    while nxt < count or pending:
        while nxt < count and len(pending) < WINDOW:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            # The port is picked at connect() for the 4-tuple: bind(port 0) would search
            # the ephemeral range for a port free on its own, slower with every socket.
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
            rc = s.connect_ex(targets[nxt % len(targets)])
            nxt += 1
            if rc not in (0, errno.EINPROGRESS):
                failed += 1
                s.close()
                continue
            pending[s.fileno()] = (s, time.time() + CONNECT_TIMEOUT)
            poll.register(s, select.POLLOUT)
        for fd, _ in poll.poll(100):
            s, _ = pending.pop(fd)
            poll.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                socks.append(s)
            else:
                failed += 1
                s.close()
        now = time.time()
        for fd, (s, deadline) in list(pending.items()):
            if now > deadline:
                del pending[fd]
                poll.unregister(fd)
                failed += 1
                s.close()
    opened = time.time() - start
    time.sleep(1)
    after_1s = closed(socks)
    time.sleep(max(0, hold - 1))
    at_end = closed(socks)
    for s in socks:
        s.close()
    print(json.dumps({"connected": len(socks), "connect_failed": failed, "seconds_to_open": round(opened, 1),
                      "closed_after_1s": after_1s, "closed_at_end": at_end}))


if __name__ == "__main__":
    main()
