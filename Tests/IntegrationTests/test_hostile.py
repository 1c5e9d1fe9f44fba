"""The hostile-client suite: each enforcement point (authorization, STRICT, the tunnel's
identity checks, resource limits) attacked the way an attacker would, with real tools
through the real kernel hooks and agents, asserting that the workload never saw the
attack and that legitimate traffic right after still works. Any change to the proxy
keeps this file green."""
import json
import os
import subprocess

from conftest import HERE
from test_mtls import refused_counts, setup as mtls_setup
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
    assert any('source_principal="spiffe://cluster.local/ns/default/sa/client-b"' in l for l in opened), opened


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


def test_a_peer_without_weft_h2_gets_no_request(mesh):
    """A genuine peer that does not speak the tunnel's requests protocol (as an older
    agent answers, whose TLS library ignores an ALPN it does not know: no protocol chosen;
    a valid identity of node b): agent a's HTTP/2 requests fail as a connect failure with
    a log line that says why, and no request stream is sent."""
    frontend = mtls_setup(mesh)
    a, b = mesh.a, mesh.b
    root = os.path.join(a.tmp, "root-ca", "ca.pem")
    web = mkleaf(b, os.path.join(b.tmp, "node-ca"), WEB, "web-old")
    b.stop_agent()
    out = os.path.join(b.tmp, "old-agent.out")
    p = subprocess.Popen(b.in_ns(["openssl", "s_server", "-accept", "10.250.2.10:15008", "-tls1_3", "-cert", web + ".pem",
                                  "-cert_chain", web + ".pem", "-key", web + ".key", "-Verify", "1", "-CAfile", root, "-quiet"],
                                 cgroup=b.cgroup), stdout=open(out, "w"), stderr=subprocess.STDOUT)
    b.procs.append(p)
    import time
    time.sleep(0.5)
    r = a.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--http2-prior-knowledge",
               "http://10.96.7.7/secret"], cgroup=frontend)
    assert r.stdout != "200", r.stdout
    a.wait_log(r"node node-b's agent does not speak weft-h2 \(it chose no protocol\)")
    p.kill()
    p.wait()
    # What reached the peer: at most the connection preface and settings, no request.
    assert b"/secret" not in open(out, "rb").read()


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
    from test_mtls import refused_counts
    for name, prefix in forged.items():
        before = refused_counts(b)["certificate"]
        got = tunnel_connect(a, "10.250.2.11:15008", prefix, root, connect)
        assert got.get("status") != "200", (name, got)
        assert refused_counts(b)["certificate"] == before + 1, name
    # The first of them is logged (refusal lines are rate-limited to one per reason per 10 s).
    assert "is not a workload identity of node node-a" in b.log(), b.log()[-2000:]
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


def allow_by_address(app):
    """An AuthorizationPolicy letting `app` be reached from three addresses only: node a's
    frontend, one that is no workload, and node b's client-b."""
    return """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s-by-address, namespace: default}
spec:
  selector: {matchLabels: {app: %s}}
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: ["10.250.1.10/32", "10.250.9.9/32", "10.250.2.50/32"]}}]}]
""" % (app, app)


IP_ALLOW = allow_by_address("echo")


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


def request_stream(node, prefix, root, target, extra=()):
    """One GET / as a stream of the tunnel's requests protocol (ALPN weft-h2) to node b,
    naming `target` (None: no target field) plus `extra` fields."""
    headers = [[":method", "GET"], [":scheme", "http"], [":path", "/"], [":authority", "web.default.svc.cluster.local"]]
    if target is not None:
        headers.append(["weft-target", target])
    headers += [list(h) for h in extra]
    r = node.run(["/usr/bin/python3", os.path.join(HERE, "tunnelclient.py"), "10.250.2.10:15008", prefix, root, "x",
                  "--raw-headers", json.dumps(headers), "--alpn", "weft-h2"], cgroup=node.cgroup)
    return json.loads(r.stdout) if r.returncode == 0 else {"status": None, "error": r.stderr[-300:]}


def test_request_streams_are_held_to_what_their_peer_may_ask(mesh):
    """Class 7 for the tunnel's requests protocol (weft-h2: each HTTP request a stream of
    its own, naming its workload port in weft-target and its original client in
    weft-source). A peer holding a valid mesh certificate reaches only this node's
    workload ports, its claimed client is believed only for its node's workloads of its
    identity, and policy decides each request. The two fields are the source agent's
    alone: a client's own never arrive as such."""
    frontend = mtls_setup(mesh, allow_by_address("web") + SAME_NODE)
    a, b = mesh.a, mesh.b
    b.add_address("10.250.2.50")
    # Through the agents, a client's own fields forging another target and a client
    # address the policy allows, over HTTP/2 (whose requests go as request streams) and
    # HTTP/1.1 (a CONNECT stream): dropped, the requests reach web as frontend's (whose
    # address the policy allows), without them.
    forged = ["-H", "weft-target: 10.250.2.11:9000", "-H", "weft-source: 10.250.9.9"]
    for proto in ("--http2-prior-knowledge", "--http1.1"):
        for _ in range(3):
            r = a.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", proto] + forged + ["http://10.96.7.7/"], cgroup=frontend)
            assert r.stdout == "200", (proto, r.stdout, r.stderr)
    seen = b.requests_seen("web")
    assert len(seen) == 6 and not [k for s in seen for k in s["headers"] if k.startswith("weft-")], seen
    assert "tunnel for requests to node node-b" in a.log()
    root = os.path.join(a.tmp, "root-ca", "ca.pem")
    cert = mkleaf(a, os.path.join(a.tmp, "node-ca"), FRONTEND, "frontend-requests")
    # Its own workload's address, vouched for: allowed, delivered as the verified identity.
    got = request_stream(a, cert, root, "10.250.2.10:8080", [["weft-source", "10.250.1.10"]])
    assert got["status"] == "200", got
    assert b.requests_seen("web")[-1]["headers"]["x-forwarded-client-cert"].endswith("URI=" + FRONTEND)
    before = refused_counts(b)
    # Addresses that are not its node's workloads of its identity are not believed: the
    # policy sees the connection's own address, which it does not allow (403 by policy).
    for claimed in ("10.250.9.9", "10.250.2.50"):
        got = request_stream(a, cert, root, "10.250.2.10:8080", [["weft-source", claimed]])
        assert got["status"] == "403", (claimed, got)
    # Targets that are not a workload port of node b: refused unprocessed (REFUSED_STREAM,
    # so a source agent with a stale endpoint tries another), counted.
    for target in ("10.250.1.10:80", "10.250.2.10:22", "10.99.0.2:8080", "127.0.0.1:15090"):
        got = request_stream(a, cert, root, target)
        assert got["status"] is None and got.get("reset") == 7, (target, got)
    # No target, a second one, garbage: malformed.
    assert request_stream(a, cert, root, None)["status"] == "400"
    assert request_stream(a, cert, root, "10.250.2.10:8080", [["weft-target", "10.250.2.11:9000"]])["status"] == "400"
    assert request_stream(a, cert, root, "no-port")["status"] == "400"
    after = refused_counts(b)
    assert after["not_local_workload"] - before["not_local_workload"] == 4, (before, after)
    assert after["bad_request"] - before["bad_request"] == 3, (before, after)
    # A malformed block (a pseudo-field after a regular one): reset, counted.
    got = request_stream(a, cert, root, "10.250.2.10:8080", [[":method", "GET"]])
    assert got["status"] is None and got.get("reset") == 1, got
    assert refused_counts(b)["bad_request"] == after["bad_request"] + 1
    # The workload saw the allowed ones only.
    assert len(b.requests_seen("web")) == 7


class Held:
    """A client that keeps one connection open from a cgroup of `node`: `tcp` (client.py
    hold: each line sent is answered by the backend) or `http` (keepalive.py: each line
    is a path requested on the same connection)."""

    def __init__(self, node, kind, host, port, cgroup, want="echo"):
        argv = (["python3", os.path.join(HERE, "client.py"), "hold", host, str(port), want, "/dev/stdout"] if kind == "tcp"
                else ["python3", os.path.join(HERE, "keepalive.py"), host, str(port)])
        self.p = subprocess.Popen(node.in_ns(argv, cgroup=cgroup), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        node.procs.append(self.p)
        if kind == "tcp":
            line = self.p.stdout.readline()
            # Anything but the client's JSON line means it gave up: show all it said.
            assert line.startswith("{") and json.loads(line) == {"held": want}, line + self.p.stdout.read()

    def send(self, line):
        """The answer to one line: the backend's name or a status; "closed" when the
        connection is gone."""
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            return "closed"
        out = self.p.stdout.readline().strip()
        return "closed" if (not out or out.startswith("error")) else out


def apply_config(node, name, text):
    after = len(node.log())
    node.write(name, text)
    node.wait_log(r"config revision \d+ applied", after=after)


def test_established_connections_see_policy_and_workload_changes(mesh):
    """Class 4: a DENY applied reaches clients that keep their connections open (the TCP
    stream is closed, the next HTTP request on a kept-alive connection gets 403), and so
    does a WorkloadEntry deleted."""
    frontend = mtls_setup(mesh, in_cgroups=True)
    a, b = mesh.a, mesh.b
    tcp = Held(a, "tcp", "10.96.7.8", 9000, frontend)
    http = Held(a, "http", "10.96.7.7", 80, frontend)
    assert tcp.send("one") == "echo" and http.send("/x") == "200"
    for node in (a, b):
        apply_config(node, "deny.yaml", """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-frontend, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}], to: [{operation: {paths: ["/x"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-echo, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]}]
""")
    assert http.send("/x") == "403" and http.send("/y") == "200"
    assert tcp.send("two") == "closed"
    assert "open connection to 10.250.2.11:9000 closed: DENY" in b.log()
    # Deleting the workload ends what is open to it.
    # Both agents must have dropped the DENY before a new connection is opened: the log
    # offsets are taken before the files go, so an apply that is quick is not missed.
    seen = {node: len(node.log()) for node in (a, b)}
    for node in (a, b):
        os.unlink(os.path.join(node.config, "deny.yaml"))
    for node in (a, b):
        node.wait_log(r"config revision \d+ applied", after=seen[node])
    tcp = Held(a, "tcp", "10.96.7.8", 9000, frontend)
    assert tcp.send("three") == "echo"
    from test_mtls import CONFIG
    without_echo = "\n---\n".join(d for d in CONFIG.split("\n---\n") if "name: echo-b" not in d)
    apply_config(b, "mesh.yaml", without_echo)
    assert tcp.send("four") == "closed"
    assert "10.250.2.11:9000 is no longer a workload port of this node" in b.log()


def two_roots(mesh, *a_flags):
    """Node a's CA chains to a second root, which node b trusts through its --trust-bundle
    (returned: the file to edit); node a trusts node b's root the same way."""
    from conftest import WEFT, sh
    a, b = mesh.a, mesh.b
    root2 = os.path.join(a.tmp, "root2")
    sh([WEFT, "ca", "init", "--out", root2])
    sh([WEFT, "ca", "issue-node", "--ca", root2, "--node", "node-a", "--out", os.path.join(a.tmp, "node-ca2")])
    bundle_b = os.path.join(b.tmp, "bundle.pem")
    open(bundle_b, "w").write(open(os.path.join(root2, "ca.pem")).read())
    frontend = mtls_setup(mesh, start=False, in_cgroups=True)
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca2"), "--trust-bundle", os.path.join(a.tmp, "root-ca", "ca.pem"), *a_flags, node="node-a")
    b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), "--trust-bundle", bundle_b, node="node-b")
    return frontend, bundle_b


def test_established_tunnels_see_trust_changes(mesh):
    """Class 4: dropping node a's root from node b's bundle drains node a's open tunnel
    (no new stream) and closes it, with the TCP stream in it, after --drain-period (2 s
    here); new connections from node a are refused."""
    frontend, bundle_b = two_roots(mesh)
    a, b = mesh.a, mesh.b
    tcp = Held(a, "tcp", "10.96.7.8", 9000, frontend)
    assert tcp.send("one") == "echo"
    # Node b's own root only (the mesh root, which node a's new CA does not chain to).
    open(bundle_b + ".tmp", "w").write(open(os.path.join(a.tmp, "root-ca", "ca.pem")).read())
    os.rename(bundle_b + ".tmp", bundle_b)
    b.wait_log(r"trust bundle now holds")
    b.wait_log(r"tunnel connection from .* closed: its peer no longer verifies", timeout=10)
    assert tcp.send("two") == "closed"
    r = a.client("tcp", "10.96.7.8", 9000, 1, "--timeout", "2", cgroup=frontend)
    assert r["failures"], r


def test_a_tunnel_lives_no_longer_than_its_certificate(mesh):
    """Class 4: node a's workload certificates last 4 s (renewed at 2 s). The tunnel a
    connection opened over is drained --drain-period before its certificate ends and
    closed when it does, with the stream it still carries; the next connection rides a
    new tunnel with the renewed certificate."""
    frontend, _ = two_roots(mesh, "--cert-ttl", "4")
    a, b = mesh.a, mesh.b
    import time
    tcp = Held(a, "tcp", "10.96.7.8", 9000, frontend)
    opened = time.time()
    assert tcp.send("one") == "echo"
    time.sleep(max(0, opened + 5 - time.time()))
    assert tcp.send("two") == "closed"
    assert "closed: the peer's certificate expired" in b.log()
    tcp = Held(a, "tcp", "10.96.7.8", 9000, frontend)
    assert tcp.send("three") == "echo"


def metric(node, name):
    """The value of one unlabelled (or fully given) metric line, e.g. 'weft_connections'."""
    for l in node.run(["curl", "-s", "http://127.0.0.1:15090/metrics"], cgroup=node.cgroup, check=True).stdout.splitlines():
        if l.startswith(name + " "):
            return float(l.split()[-1])
    raise AssertionError("no metric " + name)


def rss_mb(node):
    for l in open("/proc/%d/status" % node.agent.pid):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) / 1024
    raise AssertionError("no VmRSS")


ATTACKER = "10.250.1.66"  # on node a, no workload: an unauthenticated host


def test_one_host_cannot_exhaust_the_agent(mesh):
    """Class 5: an unauthenticated host opens 20,000 idle connections to node b's tunnel
    port and to a workload port steered into the inbound listener. The agent admits
    --max-connections-per-source (1,024) of them, refuses the rest as it accepts them
    (counted), drops the admitted ones after the TLS handshake / first-bytes timeout
    (10 s), keeps its memory bounded, and the meshed client gets every answer meanwhile.
    Its soft open-files limit was raised to the hard one at start."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard >= 8192, "the test needs a hard open-files limit of 8192 or more"
    frontend = mtls_setup(mesh, DENY_ADMIN, start=False, in_cgroups=True)
    a, b = mesh.a, mesh.b
    a.add_address(ATTACKER)
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), "--interfaces", mesh.devs["a"], node="node-a")
    b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), "--interfaces", mesh.devs["b"], node="node-b",
                  wrapper=["prlimit", "--nofile=1024:%d" % hard])
    limits = open("/proc/%d/limits" % b.agent.pid).read()
    assert [l for l in limits.splitlines() if l.startswith("Max open files")][0].split()[3:5] == [str(hard)] * 2, limits
    assert a.http("http://10.96.7.7/before", 20, cgroup=frontend)["statuses"] == {"200": 20}
    rss_before = rss_mb(b)

    def overflows():  # connections the kernel turned away for a full accept queue (every client's alike)
        out = subprocess.run(["nsenter", "--net=/run/netns/" + b.ns, "nstat", "-az", "TcpExtListenOverflows"],
                             capture_output=True, text=True).stdout.split()
        return int(out[out.index("TcpExtListenOverflows") + 1])
    overflows_before = overflows()
    # Two processes of 10,000 each (one process's open-files limit may be below 20,000).
    floods = [subprocess.Popen(a.in_ns(["python3", os.path.join(HERE, "flood.py"), ATTACKER, "10000", "14",
                                        "10.250.2.10:15008", "10.250.2.10:8080"], cgroup=a.cgroup),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    b.procs.extend(floods)
    import time
    time.sleep(4)
    held = metric(b, "weft_connections")
    rss_flood = rss_mb(b)
    during = a.http("http://10.96.7.7/during", 200, cgroup=frontend)
    results = []
    for f in floods:
        out, err = f.communicate(timeout=120)
        assert f.returncode == 0, err
        results.append(json.loads(out))
    r = {k: sum(x[k] for x in results) for k in ("connected", "closed_at_end")}
    refused = metric(b, 'weft_connections_refused_total{reason="per_source"}')
    after = a.http("http://10.96.7.7/after", 20, cgroup=frontend)
    print("flood:", results, "held:", held, "refused per source:", refused,
          "accept queue overflows:", overflows() - overflows_before,
          "agent RSS MB before/during: %.1f/%.1f" % (rss_before, rss_flood))
    assert during["statuses"] == {"200": 200} and after["statuses"] == {"200": 20}, (during, after)
    assert r["connected"] >= 19000, r
    assert held <= 1024 + 50, held  # the attacker's admitted ones, and the mesh's own
    # Each admitted connection holds its slot until the handshake / first-bytes timeout;
    # all the others were refused as they came.
    admitted_at_most = 1024 * (1 + int(max(x["seconds_to_open"] for x in results) / 10))
    assert refused >= r["connected"] - admitted_at_most, (refused, r, admitted_at_most)
    assert r["closed_at_end"] >= r["connected"] - 5, r  # refused at once, the rest timed out
    assert rss_flood - rss_before < 64, (rss_before, rss_flood)


H2_SLOW = r"""
import json, socket, time
import h2.config, h2.connection, h2.events
def go(body_gap, stop_after):
    s = socket.create_connection(("10.96.7.7", 80), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "web"), (":path", "/slow2"),
                       ("content-length", "100")])
    s.sendall(c.data_to_send())
    start, sent, status, ended = time.time(), 0, None, False
    s.settimeout(body_gap)
    while not ended:
        try:
            data = s.recv(65536)
        except socket.timeout:
            if sent < stop_after:
                c.send_data(1, b"x")
                s.sendall(c.data_to_send())
                sent += 1
            continue
        if not data:
            break
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                status = dict(e.headers)[b":status"].decode()
            elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                ended = True
        s.sendall(c.data_to_send())
    s.close()
    return {"status": status or "reset", "seconds": round(time.time() - start, 1)}
print(json.dumps({"trickle": go(0.5, 100), "quiet": go(0.3, 1)}))
"""


def test_timeouts_bound_slow_clients(mesh):
    """Class 5: a TLS handshake that never starts (1 s here), a plaintext connection that
    never says anything (the request-header timeout, 1 s), a request body trickled slower
    than the request timeout (2 s) and a stream gone quiet (the stream idle timeout, 1 s)
    each end with a close (408 where a request was begun), on HTTP/1.1 connections and
    HTTP/2 streams alike; normal requests go on."""
    frontend = mtls_setup(mesh, DENY_ADMIN, start=False, in_cgroups=True)
    a, b = mesh.a, mesh.b
    a.add_address(ATTACKER)
    flags = ["--tls-handshake-timeout", "1", "--request-header-timeout", "1", "--request-timeout", "2", "--stream-idle-timeout", "1"]
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), "--interfaces", mesh.devs["a"], *flags, node="node-a")
    b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), "--interfaces", mesh.devs["b"], *flags, node="node-b")
    r = json.loads(a.run(["python3", os.path.join(HERE, "flood.py"), ATTACKER, "4", "3", "10.250.2.10:15008", "10.250.2.10:8080"],
                         cgroup=a.cgroup, check=True).stdout)
    assert r["connected"] == 4 and r["closed_at_end"] == 4, r
    assert metric(b, 'weft_tunnel_refused_total{reason="handshake"}') >= 2
    script = r"""
import socket, sys, time, json
def go(body_gap, stop_after):
    s = socket.create_connection(("10.96.7.7", 80), timeout=10)
    s.sendall(b"POST /slow HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n")
    start, sent, data = time.time(), 0, b""
    s.settimeout(body_gap)
    while True:
        try:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        except ConnectionResetError:
            break
        except socket.timeout:
            if sent < stop_after:
                try:
                    s.sendall(b"x")
                except OSError:
                    break
                sent += 1
    return {"status": data.split(b" ")[1].decode() if data else "closed", "seconds": round(time.time() - start, 1)}
print(json.dumps({"trickle": go(0.5, 100), "quiet": go(0.3, 1)}))
"""
    got = json.loads(a.run(["python3", "-c", script], cgroup=frontend, check=True, timeout=60).stdout)
    assert got["trickle"]["status"] == "408" and 1.5 <= got["trickle"]["seconds"] <= 4, got
    assert got["quiet"]["status"] == "408" and got["quiet"]["seconds"] <= 3, got
    # The same two on HTTP/2 streams (one connection each): the stream gets its 408.
    got = json.loads(a.run(["/usr/bin/python3", "-c", H2_SLOW], cgroup=frontend, check=True, timeout=60).stdout)
    assert got["trickle"]["status"] == "408" and 1.5 <= got["trickle"]["seconds"] <= 4, got
    assert got["quiet"]["status"] == "408" and got["quiet"]["seconds"] <= 3, got
    # What the workload got of them stopped short: the upstream request was abandoned.
    slow = [x for x in b.requests_seen("web") if x["path"] in ("/slow", "/slow2")]
    assert all(x["body_len"] < 100 for x in slow), slow
    assert a.http("http://10.96.7.7/fine", 5, cgroup=frontend)["statuses"] == {"200": 5}


FORMS = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: forms, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{operation: {methods: ["DELETE"]}}]
  - to: [{operation: {hosts: ["admin.web"]}}]
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - from: [{source: {principals: []}}]
    to: [{operation: {paths: ["/everyone-denied"]}}]
"""

H2_METHOD = r"""
import json, socket, sys
import h2.config, h2.connection, h2.events
s = socket.create_connection((sys.argv[1], 80), timeout=5)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                         normalize_outbound_headers=False, validate_inbound_headers=False))
c.initiate_connection()
c.send_headers(1, [(":method", sys.argv[2]), (":scheme", "http"), (":authority", "web"),
                   (":path", sys.argv[3] if len(sys.argv) > 3 else "/x")], end_stream=True)
s.sendall(c.data_to_send())
status = None
while status is None:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            status = dict(e.headers)[b":status"].decode()
        elif isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated)) and status is None:
            status = "reset"
    s.sendall(c.data_to_send())
print(json.dumps(status))
"""


def test_method_host_and_path_forms_are_read_as_servers_read_them(mesh):
    """Class 11, each decided against Istio: a lower-case HTTP/2 :method is refused (400)
    as NIO's HTTP/1 parser refuses one (Istio would match it to no method, and a lenient
    server serves `delete` as DELETE); a Host with a trailing dot is the same host; a path
    is matched without its `;` parameters (/admin;jsessionid=1 is /admin to Tomcat and
    Spring), and a dot segment with parameters (/public/..;/admin) is refused; an empty
    `principals: []` is no principals field (Istio: proto3 has no empty-vs-unset), so
    the DENY rule holds for everyone — and validation warns. A delimiter followed by a
    combining mark is still the delimiter; a raw non-ASCII target is refused (400) on
    HTTP/1.1 and HTTP/2 alike, where before an HTTP/2 one went on and failed as 503."""
    frontend = mtls_setup(mesh, FORMS, in_cgroups=True, start=False)
    a, b = mesh.a, mesh.b
    # The default AuthorizationPolicy port is HTTP/1.1 towards web; HTTP2 clients of it
    # are served through the same exchange code.
    mesh.start()
    assert "AP007" in b.log(), b.log()[-2000:]
    got = {m: json.loads(a.run(["/usr/bin/python3", "-c", H2_METHOD, "10.96.7.7", m], cgroup=frontend, check=True).stdout)
           for m in ("delete", "DELETE", "GET")}
    assert got == {"delete": "400", "DELETE": "403", "GET": "200"}, got
    host = lambda h: a.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: " + h, "http://10.96.7.7/x"],
                           cgroup=frontend).stdout
    assert {h: host(h) for h in ("admin.web", "admin.web.", "ADMIN.WEB.:80", "web")} == \
        {"admin.web": "403", "admin.web.": "403", "ADMIN.WEB.:80": "403", "web": "200"}
    paths = json.loads(a.run(["python3", os.path.join(HERE, "rawhttp.py"), "10.96.7.7", "80", "/admin;jsessionid=1", "/admin/x;y/z",
                              "/public/..;/admin", "/public/.;/x", "/public;v=1/x", "/everyone-denied"], cgroup=frontend, check=True).stdout)
    assert paths == {"/admin;jsessionid=1": 403, "/admin/x;y/z": 403, "/public/..;/admin": 400, "/public/.;/x": 400,
                     "/public;v=1/x": 200, "/everyone-denied": 403}, paths
    # A delimiter followed by a combining mark (U+0301, U+0487) is one Character to Swift
    # and still the delimiter to a server: the normalizer and the matchers read bytes.
    marks = ["/admin/\\xcc\\x81", "/admin?\\xcc\\x81", "/admin;\\xcc\\x81x", "/x/%5C\\xd2\\x87/../../admin"]
    got = json.loads(a.run(["python3", os.path.join(HERE, "rawhttp.py"), "--raw", "10.96.7.7", "80"]
                           + ["GET %s HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n" % m for m in marks],
                           cgroup=frontend, check=True).stdout)
    assert set(got.values()) <= {400, 403}, got  # NIO's HTTP/1 parser refuses raw non-ASCII (400)
    h2 = {p: json.loads(a.run(["/usr/bin/python3", "-c", H2_METHOD, "10.96.7.7", "GET", p], cgroup=frontend, check=True).stdout)
          for p in ("/admin/\u0301", "/admin?\u0301", "/public/\u0301")}
    assert h2 == {"/admin/\u0301": "400", "/admin?\u0301": "400", "/public/\u0301": "400"}, h2  # :path is ASCII
    seen = [r["path"] for r in b.requests_seen("web")]
    assert not [p for p in seen if "admin" in p or "everyone" in p], seen
    assert [r["method"] for r in b.requests_seen("web")] == ["GET"] * 3, b.requests_seen("web")
