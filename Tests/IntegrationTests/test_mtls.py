"""Zero trust between nodes: two node namespaces, an agent on each, one root CA.

A client on node a calls a service whose workload runs on node b; the agents carry it as
an HTTP/2 CONNECT stream over TLS 1.3 with the client workload's certificate, and node
b's agent delivers it to the workload with the verified identity."""
import json
import re
import time
import os
import subprocess
import urllib.request

from conftest import HERE, WEFT

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/frontend"
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"

CONFIG = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  addresses: [10.96.7.7]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  addresses: [10.96.7.8]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: web-b
  namespace: default
  annotations: {weft.io/node: node-b, weft.io/cgroup: web}
spec: {address: 10.250.2.10, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: echo-b
  namespace: default
  annotations: {weft.io/node: node-b, weft.io/cgroup: echo}
spec: {address: 10.250.2.11, labels: {app: echo}, serviceAccount: echo}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: default
  annotations: {weft.io/node: node-a, weft.io/cgroup: frontend}
spec: {address: 10.250.1.10, labels: {app: frontend}, serviceAccount: frontend}
"""


def setup(mesh, extra="", clients=(), start=True, in_cgroups=False):
    """Cgroups, addresses and backends of CONFIG (+ `extra`), then both agents unless
    `start` is False (a test that starts them with its own flags). `in_cgroups`: the
    servers run in their workloads' cgroups (where the kernel's guard holds STRICT)."""
    a, b = mesh.a, mesh.b
    for node, cg in ((a, "frontend"), (b, "web"), (b, "echo")) + tuple((a, c) for c in clients):
        os.makedirs(os.path.join(node.cgroup, cg), exist_ok=True)
    a.add_address("10.250.1.10")
    cg = (lambda name: os.path.join(b.cgroup, name)) if in_cgroups else (lambda name: None)
    b.http_backend("web", "10.250.2.10", 8080, cgroup=cg("web"))
    b.backend("echo", "10.250.2.11", 9000, cgroup=cg("echo"))
    mesh.write("mesh.yaml", CONFIG + extra)
    if start:
        mesh.start()
    return os.path.join(a.cgroup, "frontend")


def scrape(node, name):
    """The agent's metric lines of one family."""
    r = node.run(["curl", "-s", "http://127.0.0.1:15090/metrics"], cgroup=node.cgroup, check=True)
    return [l for l in r.stdout.splitlines() if l.startswith(name + "{")]


def metrics(node):
    return scrape(node, "istio_requests_total")


def test_http_across_nodes_carries_the_verified_identity(mesh):
    frontend = setup(mesh)
    a, b = mesh.a, mesh.b
    # A client-supplied XFCC is a forgery attempt: it must never reach the workload.
    r = a.http("http://10.96.7.7/", 20, "-H", "x-forwarded-client-cert:By=x;URI=spiffe://cluster.local/ns/default/sa/admin",
               cgroup=frontend)
    assert r["statuses"] == {"200": 20}, r
    seen = b.requests_seen("web")
    assert len(seen) == 20
    for req in seen:
        assert req["headers"]["x-forwarded-client-cert"] == "By=%s;URI=%s" % (WEB_ID, CLIENT_ID), req["headers"]
    # Node b's agent delivered them (over its local stack), and reports mTLS with the
    # verified principal; node a reports the source side.
    dest = [l for l in metrics(b) if 'reporter="destination"' in l]
    assert any('source_principal="spiffe://cluster.local/ns/default/sa/frontend"' in l and 'connection_security_policy="mutual_tls"' in l
               and 'source_workload="frontend"' in l and 'response_code="200"' in l and l.endswith(" 20") for l in dest), dest
    src = [l for l in metrics(a) if 'reporter="source"' in l]
    assert any('destination_workload="web-b"' in l and l.endswith(" 20") for l in src), src


def test_tcp_across_nodes(mesh):
    frontend = setup(mesh)
    r = mesh.a.client("tcp", "10.96.7.8", 9000, 30, cgroup=frontend)
    assert r["backends"] == {"echo": 30} and not r["failures"], r
    # The peer the client sees is still the VIP.
    assert list(r["peers"]) == ["10.96.7.8:9000"], r
    # Node b's agent received them over mTLS from the frontend identity.
    opened = [l for l in scrape(mesh.b, "istio_tcp_connections_opened_total") if 'reporter="destination"' in l]
    assert any('connection_security_policy="mutual_tls"' in l and 'source_principal="spiffe://cluster.local/ns/default/sa/frontend"' in l
               and l.endswith(" 30") for l in opened), opened


WEB_TCP = """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-tcp, namespace: default}
spec:
  hosts: [web-tcp.default.svc.cluster.local]
  addresses: [10.96.7.9]
  ports: [{number: 8080, name: tcp-web, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
"""

def test_a_connection_per_request_keeps_the_tunnel(mesh):
    """wrk with a connection per request across the nodes through a TCP port: hundreds of
    CONNECT streams within seconds, each closed by both ends at once. Every one is
    answered, and the tunnel they share is never torn down (such a stream ends in a reset,
    and NIO's guard of 200 resets in 30 s used to close the tunnel under every other stream
    on it: 4 % of wrk's connections read a reset)."""
    frontend = setup(mesh, extra=WEB_TCP)
    r = mesh.a.run(["wrk", "-t2", "-c16", "-d4s", "-H", "Connection: close", "http://10.96.7.9:8080/"], cgroup=frontend, check=True)
    done = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    assert done > 300 and "Socket errors" not in r.stdout and "Non-2xx" not in r.stdout, r.stdout
    assert "ExcessiveRSTFrames" not in mesh.a.log(), [l for l in mesh.a.log().splitlines() if "failed" in l][:3]


def node_service(name, vip, address, protocol, node="node-b", workload=None, account="web"):
    """A service on port 80 whose one workload (`workload`, default `<name>-b`; cgroup
    `<name>`, service account `account`) runs on `node` at `address`:8080."""
    return """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %(n)s, namespace: default}
spec:
  hosts: [%(n)s.default.svc.cluster.local]
  addresses: [%(vip)s]
  ports: [{number: 80, name: p, protocol: %(p)s, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: %(n)s}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: %(w)s
  namespace: default
  annotations: {weft.io/node: %(node)s, weft.io/cgroup: %(n)s}
spec: {address: %(a)s, labels: {app: %(n)s}, serviceAccount: %(sa)s}
""" % {"n": name, "vip": vip, "a": address, "p": protocol, "node": node, "w": workload or name + "-b", "sa": account}


def node_b_service(name, vip, address, protocol):
    return node_service(name, vip, address, protocol)


H2_AND_GRPC = node_b_service("h2", "10.96.7.9", "10.250.2.12", "HTTP2") + node_b_service("greeter", "10.96.7.10", "10.250.2.13", "GRPC")


def test_http2_and_grpc_across_nodes(mesh):
    """Many HTTP/2 exchanges on one client connection, and gRPC calls, through the tunnel:
    each rides an inner HTTP/2 connection inside one CONNECT stream, which must stay
    healthy however many requests it carries (it once died after the second response,
    when each empty DATA frame of the inner connection became one on the tunnel)."""
    frontend = setup(mesh, H2_AND_GRPC)
    a, b = mesh.a, mesh.b
    b.h2_backend("h2", "10.250.2.12")
    b.grpc_backend("greeter", "10.250.2.13")
    # One connection, one stream at a time: every response must come back.
    r = a.run(["h2load", "-n", "500", "-c", "1", "-m", "1", "http://10.96.7.9/one"], cgroup=frontend, timeout=120)
    assert "500 succeeded, 0 failed" in r.stdout, r.stdout
    r = a.run(["h2load", "-n", "2000", "-c", "4", "-m", "10", "http://10.96.7.9/many"], cgroup=frontend, timeout=120)
    assert "2000 succeeded, 0 failed" in r.stdout, r.stdout
    unary = a.grpc("10.96.7.10:80", "Unary", 300, cgroup=frontend)
    assert unary["codes"] == {"OK": 300} and unary["replies"] == {"greeter": 300}, unary
    stream = a.grpc("10.96.7.10:80", "Stream", 3, "--body", "200", cgroup=frontend)
    assert stream["codes"] == {"OK": 3} and stream["messages"] == 600, stream
    status = a.grpc("10.96.7.10:80", "Status", 5, "--meta", "want-status=NOT_FOUND", cgroup=frontend)
    assert status["codes"] == {"NOT_FOUND": 5}, status
    # Node b received all of it over mTLS from the frontend's identity.
    dest = [l for l in metrics(b) if 'reporter="destination"' in l and 'source_principal="spiffe://cluster.local/ns/default/sa/frontend"' in l
            and 'connection_security_policy="mutual_tls"' in l]
    count = lambda workload, code: sum(int(l.rsplit(" ", 1)[1]) for l in dest
                                       if 'destination_workload="%s"' % workload in l and 'response_code="%s' % code in l)
    # Every request answered 200 the first time: no stream was reset and no connection
    # on the way was closed under it (a reset per request once tripped the peer's
    # rapid-reset guard, and the inner connection died every few hundred requests).
    assert count("h2-b", 200) == count("h2-b", "") == 2500, dest
    assert count("greeter-b", 200) == count("greeter-b", "") == 308, dest
    # Not one tunnel connection failed on the way.
    assert "failed:" not in a.log()


def test_idle_tunnel_connections_close(mesh):
    """A tunnel connection that carries no stream for --idle-timeout closes (GOAWAY, then
    close); the next connection across nodes opens a new one."""
    frontend = setup(mesh, start=False)
    mesh.start("--idle-timeout", "2")
    tunnels = lambda: len([l for l in mesh.a.run(["ss", "-Htn", "state", "established", "dport", "= :15008"], check=True).stdout.splitlines()
                           if l.strip()])
    r = mesh.a.client("tcp", "10.96.7.8", 9000, 3, cgroup=frontend)
    assert r["backends"] == {"echo": 3} and not r["failures"], r
    assert tunnels() >= 1
    deadline = time.time() + 10
    while tunnels() and time.time() < deadline:
        time.sleep(0.2)
    assert tunnels() == 0, mesh.a.log()
    r = mesh.a.client("tcp", "10.96.7.8", 9000, 3, cgroup=frontend)
    assert r["backends"] == {"echo": 3} and not r["failures"], r


def web_rule(traffic_policy):
    """A DestinationRule for the web service with this trafficPolicy (flow YAML)."""
    return """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy: %s
""" % traffic_policy


def test_upgraded_http_port_reaches_an_http1_workload(mesh):
    """h2UpgradePolicy UPGRADE makes agent a speak HTTP/2 through the tunnel; agent b
    still speaks HTTP/1.1 to the workload of an HTTP port (Istio's inbound cluster)."""
    frontend = setup(mesh, web_rule("{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}"))
    r = mesh.a.http("http://10.96.7.7/up", 5, cgroup=frontend)
    assert r["statuses"] == {"200": 5}, r
    assert len(mesh.b.requests_seen("web")) == 5


def test_websocket_across_nodes(mesh):
    """A WebSocket session through the tunnel: both agents switch to bytes on the 101 (on
    node a the upstream is a CONNECT stream, on node b the client is one). With
    maxConnections 1 each closed session gives its connection slot back."""
    frontend = setup(mesh, node_b_service("ws", "10.96.7.11", "10.250.2.14", "HTTP") + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ws, namespace: default}
spec:
  host: ws.default.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
""", start=False)
    mesh.b.ws_backend("ws", "10.250.2.14")
    mesh.start()
    for i in range(3):
        r = mesh.a.run(["python3", os.path.join(HERE, "wspeer.py"), "client", "10.96.7.11", "80", "/s%d" % i], cgroup=frontend, check=True)
        out = json.loads(r.stdout)
        assert out["status"].startswith("HTTP/1.1 101") and out["accept_ok"] and out["greeting"] == "hello from ws" \
            and out["echo"] == "PING-1", out
    seen = mesh.b.requests_seen("ws")
    assert len(seen) == 3 and all(s["headers"]["x-forwarded-client-cert"].endswith("URI=" + CLIENT_ID) for s in seen), seen


def test_plaintext_when_destination_rule_disables_tls(mesh):
    frontend = setup(mesh, web_rule("{tls: {mode: DISABLE}}"))
    r = mesh.a.http("http://10.96.7.7/", 5, "-H", "x-forwarded-client-cert:forged", cgroup=frontend)
    assert r["statuses"] == {"200": 5}, r
    # Straight from node a (the kernel's L4 path): no identity was asserted, and a
    # client's forged header is the client's own business on a path weft does not proxy.
    for req in mesh.b.requests_seen("web"):
        assert req["headers"].get("x-forwarded-client-cert") == "forged"


def s_client(node, tmp, target, cert=None, cafile=None):
    """openssl s_client to a tunnel port; the HTTP/2 preface and an empty SETTINGS frame
    are sent once the handshake is done. Returns (accepted, output): accepted means TLS
    1.3 with ALPN h2 and the server answered with HTTP/2 frames."""
    argv = ["openssl", "s_client", "-connect", target, "-tls1_3", "-alpn", "h2", "-ign_eof", "-CAfile",
            cafile or os.path.join(tmp, "root-ca", "ca.pem"), "-verify_return_error"]
    if cert:
        argv += ["-cert", cert + ".pem", "-cert_chain", cert + ".pem", "-key", cert + ".key"]
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    r = subprocess.run(node.in_ns(["timeout", "5"] + argv, cgroup=node.cgroup), input=preface, capture_output=True, timeout=20)
    out = (r.stdout + r.stderr).decode(errors="replace")
    # A server SETTINGS frame: type 0x04 on stream 0, which only a peer that accepted the
    # handshake sends.
    accepted = "ALPN protocol: h2" in out and b"\x04\x00\x00\x00\x00\x00" in r.stdout and "alert" not in out
    return accepted, out


def refused_counts(node):
    return {l.split('"')[1]: int(l.split()[-1]) for l in scrape(node, "weft_tunnel_refused_total")}


def test_tunnel_refuses_bad_client_certificates(mesh):
    setup(mesh)
    a, b = mesh.a, mesh.b
    mk = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mkcert.py")
    t = a.tmp

    def cert(name, kind, *args):
        if kind == "leaf":  # leaf CADIR URI [--expired]
            argv = [args[0], args[1], os.path.join(t, name)] + list(args[2:])
        else:
            argv = list(args)
        subprocess.run(["python3", mk, kind] + argv, check=True, capture_output=True)
        return os.path.join(t, name)

    node_ca = os.path.join(t, "node-ca")
    good = cert("good", "leaf", node_ca, CLIENT_ID)
    cert("x", "ca", os.path.join(t, "other-ca"))
    cases = {
        "no certificate": None,
        "another root": cert("other-root", "leaf", os.path.join(t, "other-ca"), CLIENT_ID),
        "another trust domain": cert("other-td", "leaf", node_ca, "spiffe://example.org/ns/default/sa/frontend"),
        "expired": cert("expired", "leaf", node_ca, CLIENT_ID, "--expired"),
        "trust domain off by one character": cert("typo", "leaf", node_ca, "spiffe://cluster.locaI/ns/default/sa/frontend"),
        "not a SPIFFE ID": cert("not-spiffe", "leaf", node_ca, "spiffe://cluster.local/ns/default/sa/frontend/"),
    }
    # The control: a certificate of the mesh is accepted, and the server proved itself
    # with the dialed workload's certificate (verified by openssl against the root).
    ok, out = s_client(a, t, "10.250.2.10:15008", good)
    assert ok and "Verification: OK" in out, out
    for name, c in cases.items():
        before = refused_counts(b)
        ok, out = s_client(a, t, "10.250.2.10:15008", c)
        assert not ok, "%s was accepted:\n%s" % (name, out)
        after = refused_counts(b)
        # Each refusal counted once, under its reason.
        kind = "handshake" if c is None else "certificate"
        assert after[kind] == before[kind] + 1 and sum(after.values()) == sum(before.values()) + 1, (name, before, after, out[-1500:])
    # Meshed traffic still flows.
    r = a.http("http://10.96.7.7/", 3, cgroup=os.path.join(a.cgroup, "frontend"))
    assert r["statuses"] == {"200": 3}, r


def test_connect_target_must_be_a_workload_port_of_the_node(mesh):
    setup(mesh)
    a, b = mesh.a, mesh.b
    here = os.path.dirname(os.path.abspath(__file__))
    prefix = os.path.join(a.tmp, "peer")
    subprocess.run(["python3", os.path.join(here, "mkcert.py"), "leaf", os.path.join(a.tmp, "node-ca"), CLIENT_ID, prefix],
                   check=True, capture_output=True)

    def connect(authority, *extra):
        r = a.run(["/usr/bin/python3", os.path.join(here, "tunnelclient.py"), "10.250.2.10:15008", prefix,
                   os.path.join(a.tmp, "root-ca", "ca.pem"), authority] + list(extra), cgroup=a.cgroup, check=True)
        return json.loads(r.stdout)

    # A workload port of node b: open, and bytes flow to the workload.
    assert connect("10.250.2.11:9000") == {"status": "200", "data": "echo\n"}
    before = refused_counts(b)
    # Anything else is refused, and counted: a workload of another node, a port the
    # workload does not serve, an address on node b that is no workload, garbage.
    for target in ("10.250.1.10:80", "10.250.2.11:22", "10.99.0.2:9000", "127.0.0.1:15090"):
        assert connect(target)["status"] == "403", target
    assert connect("no-port")["status"] == "400"
    assert connect("x", "--raw-headers", json.dumps([[":method", "GET"], [":scheme", "https"], [":path", "/"],
                                                     [":authority", "10.250.2.11:9000"]]))["status"] == "400"
    after = refused_counts(b)
    assert after["not_local_workload"] - before["not_local_workload"] == 4, (before, after)
    assert after["bad_request"] - before["bad_request"] == 2, (before, after)


def test_renewal_and_ca_rotation_under_load(mesh):
    """Certificates renewed every 2 s and the root CA rotated in three steps (trust the
    new root, switch signers, drop the old root) while a client keeps calling across the
    nodes, each call on a new connection: not one fails."""
    a, b = mesh.a, mesh.b
    bundles = {n: os.path.join(n.tmp, "bundle.pem") for n in (a, b)}
    links = {n: os.path.join(n.tmp, "ca-link") for n in (a, b)}
    old_root = open(os.path.join(mesh.root, "ca.pem")).read()
    for n in (a, b):
        open(bundles[n], "w").write(old_root)
        os.symlink(os.path.join(n.tmp, "node-ca"), links[n])
    setup(mesh, start=False)
    for n, name in ((a, "node-a"), (b, "node-b")):
        n.start_agent("--ca", links[n], "--trust-bundle", bundles[n], "--cert-ttl", "4", node=name)
    stop = os.path.join(a.tmp, "stop")
    # Every TCP connection is a new CONNECT stream, so new certificates and roots are
    # used (and checked) as soon as they exist; HTTP keeps its pooled upstreams.
    load = subprocess.Popen(a.in_ns(["python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "client.py"),
                                     "loop", "10.96.7.8", "9000", stop],
                                    cgroup=os.path.join(a.cgroup, "frontend")), stdout=subprocess.PIPE, text=True)
    time.sleep(4)  # at least one renewal on each side
    # Step 1: every node trusts the new root too.
    new_root_dir = os.path.join(a.tmp, "root-ca-2")
    subprocess.run([WEFT, "ca", "init", "--out", new_root_dir], check=True, capture_output=True)
    new_root = open(os.path.join(new_root_dir, "ca.pem")).read()
    for n in (a, b):
        write_atomic(bundles[n], old_root + new_root)
    for n in (a, b):
        n.wait_log(r"trust bundle now holds 2 root")
    # Step 2: each node's signer switches to a node CA of the new root, one after another.
    for n, name in ((b, "node-b"), (a, "node-a")):
        d = os.path.join(n.tmp, "node-ca-2")
        subprocess.run([WEFT, "ca", "issue-node", "--ca", new_root_dir, "--node", name, "--out", d], check=True, capture_output=True)
        tmp_link = links[n] + ".new"
        os.symlink(d, tmp_link)
        os.rename(tmp_link, links[n])
        n.wait_log(r"signer switched")
        time.sleep(1.5)
    # Step 3: the old root is dropped everywhere.
    for n in (a, b):
        write_atomic(bundles[n], new_root)
    for n in (a, b):
        n.wait_log(r"trust bundle now holds 1 root")
    time.sleep(3)
    open(stop, "w").close()
    out, _ = load.communicate(timeout=60)
    r = json.loads(out)
    assert not r["failures"] and set(r["backends"]) == {"echo"}, (r["failures"][:5], r["backends"])
    assert r["backends"]["echo"] > 100, r["backends"]
    # Both nodes now present chains of the new root only, and a certificate of the old
    # root is refused in a new handshake.
    for n in (a, b):
        chain = json.loads(n.weft("cert", "show", "-j", "--admin-socket", n.sock).stdout)[0]["chainPEM"]
        assert new_root.strip() in chain and old_root.strip() not in chain
    prefix = os.path.join(a.tmp, "old")
    subprocess.run(["python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "mkcert.py"), "leaf",
                    os.path.join(a.tmp, "node-ca"), CLIENT_ID, prefix], check=True, capture_output=True)
    before = refused_counts(b)
    assert not s_client(a, a.tmp, "10.250.2.10:15008", prefix, cafile=os.path.join(new_root_dir, "ca.pem"))[0]
    assert refused_counts(b)["certificate"] == before["certificate"] + 1
    # The calls did ride new handshakes: one per renewal and per signer switch.
    assert len(re.findall(r"tunnel to node node-b via", a.log())) >= 4, a.log()


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


INTRUDER = """---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: intruder
  namespace: default
  annotations: {weft.io/node: node-a, weft.io/cgroup: intruder}
spec: {address: 10.250.1.11, serviceAccount: intruder}
"""


def test_authz_allow_read_example(mesh):
    here = os.path.dirname(os.path.abspath(__file__))
    example = open(os.path.join(here, "..", "..", "..", "shared", "examples", "authz-allow-read.yaml")).read()
    # The intruder's cgroup exists before the agent starts, so the kernel knows it is a
    # workload (a cgroup that appears later is picked up at the next resync).
    frontend = setup(mesh, INTRUDER + "---\n" + example, clients=("intruder",))
    a, b = mesh.a, mesh.b
    intruder = os.path.join(a.cgroup, "intruder")
    a.add_address("10.250.1.11")
    assert a.http("http://10.96.7.7/read", 5, cgroup=frontend)["statuses"] == {"200": 5}
    post = a.http("http://10.96.7.7/write", 3, "-X", "POST", "--data", "10", cgroup=frontend)
    assert post["statuses"] == {"403": 3} and post["bodies"][0]["body"] == "RBAC: access denied", post
    assert a.http("http://10.96.7.7/read", 3, cgroup=intruder)["statuses"] == {"403": 3}
    # Only the allowed calls reached the workload.
    assert [(r["method"], r["path"]) for r in b.requests_seen("web")] == [("GET", "/read")] * 5
    # The TCP service: the example's rule names a method, an HTTP-only field, so as an
    # ALLOW rule it cannot match plain TCP, and the ALLOW policy denies all of it.
    r = a.client("tcp", "10.96.7.8", 9000, 3, cgroup=frontend)
    assert not r["backends"] and len(r["failures"]) == 3, r
    assert refused_counts(b)["denied"] == 3
    # weft authz check explains the same decisions from the running config.
    def check(*args):
        return subprocess.run([WEFT, "authz", "check", "--admin-socket", b.sock, "--to", "default/web-b", "--port", "8080"] + list(args),
                              capture_output=True, text=True)
    ok = check("--from", CLIENT_ID, "--method", "GET", "--path", "/read")
    assert ok.returncode == 0 and ok.stdout.startswith("ALLOW") and "default/allow-read rule 0" in ok.stdout, ok.stdout
    no = check("--from", CLIENT_ID, "--method", "POST", "--path", "/read")
    assert no.returncode == 1 and no.stdout.startswith("DENY") and "ALLOW policies apply (default/allow-read)" in no.stdout, no.stdout
    assert check("--from", "spiffe://cluster.local/ns/default/sa/intruder", "--method", "GET", "--path", "/").returncode == 1


def test_path_normalization_before_authorization(mesh):
    here = os.path.dirname(os.path.abspath(__file__))
    frontend = setup(mesh, """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
""")
    a, b = mesh.a, mesh.b
    corpus = ["/admin", "/app/%2E./admin", "/%2Fadmin", "//admin", "/./admin", "/app/../admin", "/%2e%2e/admin", "/%61dmin",
              "\\admin", "/%5Cadmin", "/admin#x", "/a/b/../../admin", "///admin/x", "/x%2f..%2fadmin", "/admin%00", "/admin%00/x"]
    r = a.run(["python3", os.path.join(here, "rawhttp.py"), "10.96.7.7", "80"] + corpus + ["/ADMIN", "/public"], cgroup=frontend,
              check=True)
    got = json.loads(r.stdout)
    for target in corpus:
        assert got[target] in (403, 400), (target, got[target])
    assert got["/admin%00"] == 400 and got["/admin"] == 403
    # Allowed requests pass, with the path the workload receives being the normalized one.
    assert got["/ADMIN"] == 200 and got["/public"] == 200, got
    seen = [x["path"] for x in b.requests_seen("web")]
    assert sorted(seen) == ["/ADMIN", "/public"], seen


def test_renewals_never_cut_a_kept_alive_http_connection(mesh):
    """Keep-alive HTTP/1.1 through the tunnel, a request in flight nearly all the time
    (each answered after 40 ms, 20 a second), while certificates live 4 s (renewed every
    2 s): every tunnel connection is cut at its peer's certificate's end, so the
    connections kept alive over its streams must have moved to a new one by then.
    They did not: a pooled upstream never asked for a new stream, so its tunnel stayed in
    use until it was cut, with a request on it now and then (the soak's 503s)."""
    frontend = setup(mesh, start=False)
    a, b = mesh.a, mesh.b
    for n, name in ((a, "node-a"), (b, "node-b")):
        n.start_agent("--ca", os.path.join(n.tmp, "node-ca"), "--cert-ttl", "4", node=name)
    r = a.run(["/usr/bin/python3", os.path.join(HERE, "soakload.py"), "http1", "10.96.7.7:80", "20", "14", "/slow?delay=40"],
              cgroup=frontend, timeout=60)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ok"] >= 250 and got["failed"] == 0, got
    # The traffic moved to a new tunnel connection at each renewal.
    assert len(re.findall(r"tunnel (?:for requests )?to node node-b", a.log())) >= 5, a.log()
