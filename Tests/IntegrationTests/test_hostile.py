"""The hostile-client suite: each enforcement point (authorization, STRICT, the tunnel's
identity checks, resource limits) attacked the way an attacker would, with real tools
through the real kernel hooks and agents, asserting that the workload never saw the
attack and that legitimate traffic right after still works. Any change to the proxy
keeps this file green."""
import json
import os
import subprocess

from conftest import HERE
from test_mtls import setup as mtls_setup
from test_peerauth import inbound_counts

DENY_ADMIN = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""

# Requests a lenient server (httpbackend.py, like many) reads as GET /admin, but that do
# not start with an upper-case method and a space: they once went through as opaque TCP,
# past the policy.
DISGUISED_ADMIN = [
    "\\r\\nGET /admin HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",      # RFC 9112 §2.2 empty line
    "\\n\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",
    "get /admin HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",            # lower-case method
    "GET\\t/admin HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",           # a tab for the space
    "\\r\\n" * 40 + "GET /admin HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",  # past the sniffer's patience
]


def raw(node, host, port, requests, cgroup=None):
    r = node.run(["python3", os.path.join(HERE, "rawhttp.py"), "--raw", host, str(port)] + requests, cgroup=cgroup, check=True)
    return json.loads(r.stdout)


def paths_seen(node, name):
    return [r["path"] for r in node.requests_seen(name)]


def start_with_interfaces(mesh):
    for node, name in ((mesh.a, "a"), (mesh.b, "b")):
        node.start_agent("--ca", os.path.join(node.tmp, "node-ca"), "--interfaces", mesh.devs[name], node="node-" + name)


def test_bytes_the_sniffer_does_not_recognise_never_pass_an_http_port_unparsed(mesh):
    """Class 1: through the tunnel (a meshed client on node a) and as plaintext steered
    into node b's inbound listener (a client outside the mesh), nothing that a server
    reads as HTTP reaches the workload without the HTTP rules: it is parsed as HTTP
    (and refused, or authorized), or else authorized as plain TCP, which a DENY rule
    with HTTP fields denies outright."""
    frontend = mtls_setup(mesh, DENY_ADMIN, start=False, in_cgroups=True)
    start_with_interfaces(mesh)
    a, b = mesh.a, mesh.b
    paths = {"tunnel": ("10.96.7.7", 80, frontend), "steered plaintext": ("10.250.2.10", 8080, None)}
    for how, (host, port, cg) in paths.items():
        got = raw(a, host, port, DISGUISED_ADMIN, cgroup=cg)
        assert all(v != 200 for v in got.values()), (how, got)
        assert not [p for p in paths_seen(b, "web") if "admin" in p.lower()], (how, got, b.requests_seen("web"))
        # Legitimate requests, the lenient forms included, still go through.
        ok = raw(a, host, port, ["\\r\\nGET /public HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",
                                 "GET /public HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n"], cgroup=cg)
        assert list(ok.values()) == [200, 200], (how, ok)
    # The opaque attempts were refused as TCP and counted, on both paths.
    refusals = [l for l in b.run(["curl", "-s", "http://127.0.0.1:15090/metrics"], cgroup=b.cgroup, check=True).stdout.splitlines()
                if l.startswith(("weft_tunnel_refused_total{", "weft_plaintext_refused_total{")) and 'reason="denied"' in l]
    assert all(not l.endswith(" 0") for l in refusals) and len(refusals) == 2, refusals


SAME_NODE = """---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-b
  namespace: default
  annotations: {weft.io/node: node-b, weft.io/cgroup: client-b}
spec: {address: 10.250.2.50, labels: {app: client-b}, serviceAccount: client-b}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo-strict, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: secret-needs-mtls, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}], to: [{operation: {paths: ["/secret"]}}]}]
"""


def test_unmeshed_local_clients_do_not_borrow_the_agents_identity(mesh):
    """Class 2: a process under --cgroup that is no workload, on the node of the
    destination, dials the service VIPs. The agent carries it on its own marked socket,
    which the kernel's guard lets through, so the agent applies the destination's inbound
    rules itself: STRICT refuses it, and authorization sees no principal. The same holds
    for a workload whose DestinationRule says tls DISABLE toward a STRICT port."""
    mtls_setup(mesh, DENY_ADMIN + SAME_NODE, start=False, in_cgroups=True)
    a, b = mesh.a, mesh.b
    os.makedirs(os.path.join(b.cgroup, "client-b"))
    b.add_address("10.250.2.50")
    start_with_interfaces(mesh)
    meshed = os.path.join(b.cgroup, "client-b")
    # The control: the meshed workload of the same node reaches both, with its identity.
    assert not b.client("tcp", "10.96.7.8", 9000, 3, cgroup=meshed)["failures"]
    assert b.http("http://10.96.7.7/secret", 1, cgroup=meshed)["statuses"] == {"200": 1}
    # The unmeshed client (the sandbox's `client` cgroup: under --cgroup, no workload).
    echo = b.client("tcp", "10.96.7.8", 9000, 3)
    assert len(echo["failures"]) == 3 and not echo["backends"], echo
    got = {p: b.http("http://10.96.7.7" + p, 1)["statuses"] for p in ("/secret", "/%73ecret", "/admin", "/public")}
    assert got == {"/secret": {"403": 1}, "/%73ecret": {"403": 1}, "/admin": {"403": 1}, "/public": {"200": 1}}, got
    seen = [r["path"] for r in b.requests_seen("web")]
    assert seen == ["/secret", "/public"], seen
    # tls DISABLE toward the STRICT port: refused for the meshed client too.
    after = len(b.log())
    mesh.write("dr.yaml", """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo.default.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
""")
    b.wait_log(r"config revision \d+ applied", after=after)
    before = inbound_counts(b).get(("10.250.2.11", "strict_local"), 0)
    echo = b.client("tcp", "10.96.7.8", 9000, 1, cgroup=meshed)
    assert len(echo["failures"]) == 1 and not echo["backends"], echo
    # The port is no longer captured (tls DISABLE: the kernel's L4 path), and the
    # workload's socket refused the plaintext.
    assert inbound_counts(b).get(("10.250.2.11", "strict_local"), 0) > before


VAULT = """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vault, namespace: default}
spec:
  hosts: [vault.default.svc.cluster.local]
  addresses: [10.96.7.30]
  ports: [{number: 9100, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vault}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vault-b
  namespace: default
  annotations: {weft.io/node: node-b, weft.io/cgroup: vault}
spec: {address: 10.250.2.30, labels: {app: vault}, serviceAccount: vault}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: vault-strict, namespace: default}
spec:
  selector: {matchLabels: {app: vault}}
  mtls: {mode: STRICT}
"""

AGENT_MARK = "0x77650000"  # weft agent's default --agent-mark


def vault_setup(mesh):
    """SAME_NODE's workloads, and vault: a STRICT TCP workload on node b whose server
    listens on the wildcard address [::] (dual-stack) port 9100, as most servers do. Node b's link
    also gets an IPv6 address (fd00:99::2) that no workload owns."""
    frontend = mtls_setup(mesh, SAME_NODE + VAULT, start=False, in_cgroups=True)
    a, b = mesh.a, mesh.b
    for cg in ("vault", "client-b"):
        os.makedirs(os.path.join(b.cgroup, cg))
    b.add_address("10.250.2.30")
    b.add_address("10.250.2.50")
    from conftest import sh
    sh(["ip", "-n", a.ns, "addr", "add", "fd00:99::1/64", "dev", mesh.devs["a"], "nodad"])
    sh(["ip", "-n", b.ns, "addr", "add", "fd00:99::2/64", "dev", mesh.devs["b"], "nodad"])
    p = subprocess.Popen(b.in_ns(["python3", os.path.join(HERE, "backend.py"), "vault", "::", "9100"], cgroup=os.path.join(b.cgroup, "vault")),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b.procs.append(p)
    assert p.stdout.readline().strip() == "ready"
    start_with_interfaces(mesh)
    return frontend


def reached(node, host, port, cgroup=None, *extra):
    """Whether a plaintext connection to host:port got the vault's answer."""
    r = node.client("tcp", host, port, 1, "--timeout", "1", *extra, cgroup=cgroup)
    return r["backends"].get("vault", 0) == 1


def test_strict_holds_for_wildcard_listeners_on_every_address(mesh):
    """Class 3: STRICT is the listening socket's workload's, not the dialed address's.
    The vault listens on [::]; plaintext to it through loopback, through node addresses
    that no workload owns, IPv4 and IPv6, from the node itself and from the other node,
    is refused at its socket. Meshed clients still get through."""
    frontend = vault_setup(mesh)
    a, b = mesh.a, mesh.b
    assert reached(a, "10.96.7.30", 9100, frontend), "the meshed client must reach the vault"
    before = inbound_counts(b).get(("10.250.2.30", "strict_local"), 0)
    attempts = {
        "node b, 127.0.0.1": (b, "127.0.0.1", None),
        "node b, ::1": (b, "::1", None),
        "node b, its link address": (b, "10.99.0.2", None),
        "node b, its IPv6 link address": (b, "fd00:99::2", None),
        "node b, the workload's address": (b, "10.250.2.30", None),
        "node b, loopback from a non-workload under --cgroup": (b, "127.0.0.1", b.client_cg),
        "node a, node b's link address": (a, "10.99.0.2", None),
        "node a, node b's IPv6 link address": (a, "fd00:99::2", None),
    }
    got = {name: reached(node, host, 9100, cg) for name, (node, host, cg) in attempts.items()}
    assert not any(got.values()), got
    # Each refusal was counted for the vault (the listening workload), whatever address
    # it was sent to.
    assert inbound_counts(b).get(("10.250.2.30", "strict_local"), 0) >= before + len(attempts), inbound_counts(b)
    assert reached(a, "10.96.7.30", 9100, frontend)


def test_the_agents_mark_is_no_credential(mesh):
    """Class 9: a workload with CAP_NET_ADMIN sets the agent's SO_MARK. It neither passes
    the STRICT guard (the kernel checks that the sending socket is the agent's, made in
    the agent's cgroup) nor escapes capture (the connecting process must be in the
    agent's cgroup too)."""
    vault_setup(mesh)
    b = mesh.b
    meshed = os.path.join(b.cgroup, "client-b")
    for host in ("10.250.2.30", "127.0.0.1", "::1"):
        assert not reached(b, host, 9100, meshed, "--mark", AGENT_MARK), host
    before = b.counters()
    # Through the VIP it is captured like any connect() of the workload, and arrives
    # over mTLS with the workload's own identity.
    assert reached(b, "10.96.7.30", 9100, meshed, "--mark", AGENT_MARK)
    after = b.counters()
    assert after["connect_capture"] == before["connect_capture"] + 1, (before, after)
    assert after.get("agent_bypass", 0) - before.get("agent_bypass", 0) <= 1, (before, after)  # the agent's own dial
    opened = [l for l in b.run(["curl", "-s", "http://127.0.0.1:15090/metrics"], cgroup=b.cgroup, check=True).stdout.splitlines()
              if l.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"' in l and "vault" in l]
    assert any('source_principal="cluster.local/ns/default/sa/client-b"' in l for l in opened), opened


SQUATTER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
log = open(sys.argv[3], "a", buffering=1)
while True:
    c, peer = s.accept()
    log.write("accepted %s\\n" % (peer,))
    c.close()
"""


def squat(node, host, port, cgroup=None):
    """A process listening on an agent's port; returns the file it logs accepts to."""
    log = os.path.join(node.tmp, "squatter-%s-%d.log" % (host.replace(":", "_"), port))
    open(log, "w").close()
    p = subprocess.Popen(node.in_ns(["python3", "-c", SQUATTER, host, str(port), log], cgroup=cgroup),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node.procs.append(p)
    line = p.stdout.readline().strip()
    assert line == "ready", line
    return log


def test_a_taken_listener_port_stops_the_agent(sandbox):
    """Class 6: a process that holds [::1]:15001 before the agent starts would receive
    every IPv6 connection the kernel redirects to the agent. The agent refuses to start,
    naming the port, instead of warning and running without it."""
    squat(sandbox, "::1", 15001)
    sandbox.start_agent(wait=False)
    assert sandbox.agent.wait(timeout=30) != 0
    log = sandbox.log()
    assert "cannot listen on [::1]:15001 (--proxy-port)" in log and "taken by another process" in log, log


def test_nobody_but_the_agent_receives_what_is_meant_for_it(mesh):
    """Class 6: node b's agent dies (SIGKILL: its programs stay attached) and processes
    take its ports — a host process the inbound listener's, a workload the capture
    port. Plaintext from node a that TC steers, and a workload's captured connect(),
    must reach neither: TC steers only into the sockets the agent gave it, and no
    listener but the agent's may accept on an agent port."""
    vault_setup(mesh)
    a, b = mesh.a, mesh.b
    import signal
    b.stop_agent(signal.SIGKILL)
    inbound = squat(b, "0.0.0.0", 15006)
    capture = squat(b, "127.0.0.1", 15001, cgroup=os.path.join(b.cgroup, "vault"))
    # web is PERMISSIVE under an AuthorizationPolicy: plaintext to it is steered.
    got = raw(a, "10.250.2.10", 8080, ["GET /public HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n"])
    assert list(got.values()) != [200], got
    # A workload's connect() to a captured VIP is redirected to 127.0.0.1:15001.
    r = b.client("tcp", "10.96.7.30", 9100, 1, "--timeout", "2", cgroup=os.path.join(b.cgroup, "client-b"))
    assert r["failures"], r
    assert open(inbound).read() == "" and open(capture).read() == "", (open(inbound).read(), open(capture).read())
    counts = inbound_counts(b)
    assert counts.get(("10.250.2.10", "no_listener"), 0) >= 1, counts
    assert counts.get(("10.250.2.30", "squatted"), 0) >= 1, counts


def mkleaf(node, ca_dir, uri, name):
    """A leaf for `uri` signed by the CA in `ca_dir` (mkcert.py); returns its prefix."""
    prefix = os.path.join(node.tmp, name)
    subprocess.run(["python3", os.path.join(HERE, "mkcert.py"), "leaf", ca_dir, uri, prefix], check=True, capture_output=True)
    return prefix


def tunnel_connect(node, target, prefix, root, headers):
    r = node.run(["/usr/bin/python3", os.path.join(HERE, "tunnelclient.py"), target, prefix, root, "x", "--raw-headers", json.dumps(headers)],
                 cgroup=node.cgroup)
    return json.loads(r.stdout) if r.returncode == 0 else {"status": None, "error": r.stderr[-300:]}


FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
WEB = "spiffe://cluster.local/ns/default/sa/web"


def test_a_node_ca_speaks_only_for_its_own_nodes_workloads(mesh):
    """Class 8: node CAs name their node, and a leaf is accepted only for identities of
    workloads of the node whose CA issued it — at the destination (node a's CA minting
    node b's web identity; the mesh root minting directly) and at the source (an
    impostor on node b's tunnel port presenting web's identity from node a's CA)."""
    frontend = mtls_setup(mesh)
    a, b = mesh.a, mesh.b
    root = os.path.join(a.tmp, "root-ca", "ca.pem")
    connect = [[":method", "CONNECT"], [":authority", "10.250.2.11:9000"]]
    good = mkleaf(a, os.path.join(a.tmp, "node-ca"), FRONTEND, "good")
    assert tunnel_connect(a, "10.250.2.11:15008", good, root, connect)["status"] == "200"
    forged = {
        "node a's CA minting node b's identity": mkleaf(a, os.path.join(a.tmp, "node-ca"), WEB, "web-from-a"),
        "the root minting directly": mkleaf(a, os.path.join(a.tmp, "root-ca"), FRONTEND, "from-root"),
    }
    for name, prefix in forged.items():
        got = tunnel_connect(a, "10.250.2.11:15008", prefix, root, connect)
        assert got.get("status") != "200", (name, got)
    assert "is not a workload identity of node node-a" in b.log() and "bound to no node" in b.log(), b.log()[-2000:]
    # The source side: node b's agent is gone, and an impostor holding web's identity
    # from node a's CA answers on node b's tunnel port.
    b.stop_agent()
    impostor = forged["node a's CA minting node b's identity"]
    out = os.path.join(b.tmp, "impostor.out")
    p = subprocess.Popen(b.in_ns(["openssl", "s_server", "-accept", "10.250.2.10:15008", "-tls1_3", "-alpn", "h2", "-cert", impostor + ".pem",
                                  "-cert_chain", impostor + ".pem", "-key", impostor + ".key", "-Verify", "1", "-CAfile", root, "-quiet"],
                                 cgroup=b.cgroup), stdout=open(out, "w"), stderr=subprocess.STDOUT)
    b.procs.append(p)
    import time
    time.sleep(0.5)
    r = a.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "http://10.96.7.7/secret"], cgroup=frontend)
    assert r.stdout != "200", r.stdout
    a.wait_log(r"issued by node node-a's CA, but this tunnel goes to node node-b")
    p.kill()
    p.wait()
    # Not one byte of a request reached the impostor.
    assert "PRI * HTTP/2.0" not in open(out, errors="replace").read()


IP_ALLOW = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-by-address, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: ["10.250.1.10/32", "10.250.9.9/32", "10.250.2.50/32"]}}]}]
"""


def test_forwarded_for_is_believed_only_for_the_peers_own_workloads(mesh):
    """Class 7: the tunnel's Forwarded: for= says who the original client was, and
    source.ip / ipBlocks are matched against it — but only when that address is a
    workload of the verified identity on the peer's node. A peer holding a valid mesh
    certificate cannot claim an arbitrary address, nor another node's workload."""
    frontend = mtls_setup(mesh, IP_ALLOW + SAME_NODE)
    a, b = mesh.a, mesh.b
    b.add_address("10.250.2.50")
    # The real frontend, through its agent: its own address, vouched for by node a.
    r = a.client("tcp", "10.96.7.8", 9000, 3, cgroup=frontend)
    assert r["backends"] == {"echo": 3}, r
    root = os.path.join(a.tmp, "root-ca", "ca.pem")
    cert = mkleaf(a, os.path.join(a.tmp, "node-ca"), FRONTEND, "frontend")
    for claimed in ("10.250.9.9", "10.250.2.50"):
        got = tunnel_connect(a, "10.250.2.11:15008", cert, root, [[":method", "CONNECT"], [":authority", "10.250.2.11:9000"],
                                                                 ["forwarded", 'for="%s"' % claimed]])
        assert got["status"] == "403", (claimed, got)
    # The same claim of its own workload's address is believed.
    got = tunnel_connect(a, "10.250.2.11:15008", cert, root, [[":method", "CONNECT"], [":authority", "10.250.2.11:9000"],
                                                             ["forwarded", 'for="10.250.1.10"']])
    assert got["status"] == "200" and got["data"] == "echo\n", got
