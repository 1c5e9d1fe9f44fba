#!/usr/bin/env python3
"""A hand-made tunnel client (Debian's python3-h2 + ssl): TLS 1.3 with a client
certificate, ALPN h2, one CONNECT stream, as a peer agent (or an attacker holding a mesh
certificate) would send it. Prints JSON: the response status, and what came back for a
line sent through the stream once it is open (and the error code of a reset).

With --alpn weft-h2 it speaks the tunnel's requests protocol instead: the headers (give
them with --raw-headers) are one HTTP request, sent with END_STREAM; it prints the
response status and body.

  tunnelclient.py HOST:PORT CERTPREFIX CAFILE AUTHORITY [--raw-headers JSON] [--alpn P]
"""
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    prefix, cafile, authority = sys.argv[2], sys.argv[3], sys.argv[4]
    headers = [(":method", "CONNECT"), (":authority", authority)]
    if "--raw-headers" in sys.argv:
        headers = [tuple(h) for h in json.loads(sys.argv[sys.argv.index("--raw-headers") + 1])]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile)
    ctx.load_cert_chain(prefix + ".pem", prefix + ".key")
    alpn = sys.argv[sys.argv.index("--alpn") + 1] if "--alpn" in sys.argv else "h2"
    request = alpn != "h2"
    ctx.set_alpn_protocols([alpn])
    s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                                                validate_outbound_headers=False))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers, end_stream=request)
    s.sendall(conn.data_to_send())
    out = {"status": None, "data": ""}
    sent = False
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    out["status"] = dict(ev.headers).get(":status")
                    if out["status"] == "200" and not sent and not request:
                        conn.send_data(sid, b"hello\n")
                        sent = True
                elif isinstance(ev, h2.events.DataReceived):
                    out["data"] += ev.data.decode(errors="replace")
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamReset):
                    out["reset"] = int(ev.error_code)
                    raise StopIteration
                elif isinstance(ev, h2.events.StreamEnded):
                    raise StopIteration
            s.sendall(conn.data_to_send())
    except (StopIteration, socket.timeout, ssl.SSLError, ConnectionError):
        pass
    print(json.dumps(out))


if __name__ == "__main__":
    main()
