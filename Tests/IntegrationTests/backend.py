#!/usr/bin/env python3
"""Test backend: answers every TCP connection and UDP datagram with its name.

TCP: reads one line (the request), replies "<name>\n" and, for HTTP requests, a minimal
HTTP/1.1 response whose body is the name, then closes. UDP: replies "<name>:<payload>".
Usage: backend.py NAME ADDRESS PORT [tcp|udp|both]
"""
import socket
import sys
import threading


def listen_tcp(family, addr, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1024)
    return s


def serve_tcp(name, s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, name), daemon=True).start()


def handle(c, name):
    try:
        c.settimeout(30)
        data = b""
        while b"\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"GET ") or data.startswith(b"HEAD "):
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            body = (name + "\n").encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        elif data.startswith(b"HOLD"):
            # Keep the connection open: answer every line until the client closes.
            c.sendall((name + "\n").encode())
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                c.sendall((name + "\n").encode())
        else:
            c.sendall((name + "\n").encode())
    except OSError:
        pass
    finally:
        c.close()


def serve_udp(name, family, addr, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(name.encode() + b":" + data, peer)


def main():
    name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "tcp"
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    threads = []
    if mode in ("tcp", "both"):
        # Listening before "ready" is printed: a caller may connect at once.
        threads.append(threading.Thread(target=serve_tcp, args=(name, listen_tcp(family, addr, port)), daemon=True))
    if mode in ("udp", "both"):
        threads.append(threading.Thread(target=serve_udp, args=(name, family, addr, port), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
