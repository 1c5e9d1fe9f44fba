"""The hostile-client suite: each enforcement point (authorization, STRICT, the tunnel's
identity checks, resource limits) attacked the way an attacker would, with real tools
through the real kernel hooks and agents, asserting that the workload never saw the
attack and that legitimate traffic right after still works. Any change to the proxy
keeps this file green."""
import json
import os

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
