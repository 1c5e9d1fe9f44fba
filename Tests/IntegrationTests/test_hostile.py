"""The hostile-client suite: each enforcement point (authorization, STRICT, the tunnel's
identity checks, resource limits) attacked the way an attacker would, with real tools
through the real kernel hooks and agents, asserting that the workload never saw the
attack and that legitimate traffic right after still works. Any change to the proxy
keeps this file green."""
import json
import os

from conftest import HERE
from test_mtls import setup as mtls_setup

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
    frontend = mtls_setup(mesh, DENY_ADMIN, start=False)
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
