"""PeerAuthentication across two nodes: which connections reach a workload, and with
which identity, for every mode × client kind × client location; STRICT enforced in the
kernel against clients that bypass the agent (TC ingress on the node's interface, and the
workloads' own sockets for same-node traffic); PERMISSIVE plaintext steered into the
agent's inbound listener, where AuthorizationPolicy and telemetry apply to it."""
import json
import os
import signal

from conftest import WEFT, sh

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "..", "shared", "examples")

# Three HTTP workloads on node b. STRICT comes from ../shared/examples/mtls-strict.yaml,
# unchanged (namespace production); PERMISSIVE from a workload policy overriding a
# namespace-wide STRICT; DISABLE from a port-level setting under a workload policy whose
# own mode is UNSET (so its other ports inherit the namespace's STRICT).
SERVERS = {"strict": ("production", "10.250.2.21", "10.96.8.1"),
           "permissive": ("default", "10.250.2.22", "10.96.8.2"),
           "disable": ("default", "10.250.2.23", "10.96.8.3")}

CLIENTS = """apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-a
  namespace: default
  annotations: {weft.io/node: node-a, weft.io/cgroup: client-a}
spec: {address: 10.250.1.10, labels: {app: client}, serviceAccount: client-a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-b
  namespace: default
  annotations: {weft.io/node: node-b, weft.io/cgroup: client-b}
spec: {address: 10.250.2.10, labels: {app: client}, serviceAccount: client-b}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: permissive, namespace: default}
spec:
  selector: {matchLabels: {app: permissive}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: disable-8080, namespace: default}
spec:
  selector: {matchLabels: {app: disable}}
  mtls: {mode: UNSET}
  portLevelMtls: {8080: {mode: DISABLE}}
"""

SERVER = """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  addresses: [{vip}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {name}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}-b
  namespace: {ns}
  annotations: {{weft.io/node: node-b, weft.io/cgroup: {name}}}
spec: {{address: {addr}, labels: {{app: {name}}}, serviceAccount: {name}}}
"""


def setup(mesh, extra=""):
    a, b = mesh.a, mesh.b
    config = CLIENTS + "".join(SERVER.format(name=n, ns=ns, addr=addr, vip=vip) for n, (ns, addr, vip) in SERVERS.items())
    for node, cg in ((a, "client-a"), (b, "client-b")) + tuple((b, n) for n in SERVERS):
        os.makedirs(os.path.join(node.cgroup, cg), exist_ok=True)
    a.add_address("10.250.1.10")
    b.add_address("10.250.2.10")
    for n, (_, addr, _) in SERVERS.items():
        b.http_backend(n, addr, 8080, cgroup=os.path.join(b.cgroup, n))
    mesh.write("mesh.yaml", config + extra)
    mesh.write("mtls-strict.yaml", open(os.path.join(EXAMPLES, "mtls-strict.yaml")).read())
    mesh.a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), "--interfaces", mesh.devs["a"], node="node-a")
    mesh.b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), "--interfaces", mesh.devs["b"], node="node-b")


def curl(node, url, cgroup=None, *args):
    """One request; the status code, or "refused" when no connection came about (a
    dropped SYN: curl gives up after the connect timeout)."""
    r = node.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--connect-timeout", "2", "--max-time", "5"] + list(args) + [url],
                 cgroup=cgroup)
    return r.stdout if r.returncode == 0 else "refused"


def identities(node, name):
    """What the server was told about each request's client: the XFCC URI, or None."""
    out = []
    for req in node.requests_seen(name):
        xfcc = req["headers"].get("x-forwarded-client-cert")
        out.append(xfcc.split("URI=", 1)[1] if xfcc else None)
    return out


def inbound_counts(node):
    """weft map dump weft_inctr_v1: {(address, reason): count}."""
    rows = json.loads(node.weft("map", "dump", "weft_inctr_v1", "-j", "--bpffs", node.bpffs).stdout)
    return {tuple(r["key"].split(" ")): int(r["value"]) for r in rows}


def test_reachability_matrix(mesh):
    setup(mesh)
    a, b = mesh.a, mesh.b
    meshed = {"other node": (a, os.path.join(a.cgroup, "client-a"), "spiffe://cluster.local/ns/default/sa/client-a"),
              "same node": (b, os.path.join(b.cgroup, "client-b"), "spiffe://cluster.local/ns/default/sa/client-b")}
    # Expected (status, identity the server was given) per cell.
    expect = {
        ("strict", "meshed"): ("200", "id"), ("strict", "plaintext"): ("refused", None),
        ("permissive", "meshed"): ("200", "id"), ("permissive", "plaintext"): ("200", None),
        ("disable", "meshed"): ("200", None), ("disable", "plaintext"): ("200", None),
    }
    got, want = {}, {}
    for server, (ns, addr, vip) in SERVERS.items():
        for where, (node, cg, client_id) in meshed.items():
            for kind in ("meshed", "plaintext"):
                before = len(b.requests_seen(server))
                # A meshed client calls the service; the plaintext one bypasses the agent
                # (no workload cgroup) and dials the workload's address directly.
                status = curl(node, "http://%s/" % vip, cg) if kind == "meshed" else curl(node, "http://%s:8080/" % addr)
                seen = identities(b, server)[before:]
                status_want, id_want = expect[(server, kind)]
                got[(server, kind, where)] = (status, seen)
                want[(server, kind, where)] = (status_want, [] if status_want == "refused" else [client_id if id_want else None])
    bad = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    assert not bad, "cells that differ (got, expected): %r" % bad

    # The kernel counted the refusals per workload and reason: at TC for the other
    # node's client, at the workload's socket for this node's.
    counts = inbound_counts(b)
    assert counts.get(("10.250.2.21", "strict_network"), 0) >= 1, counts
    assert counts.get(("10.250.2.21", "strict_local"), 0) >= 1, counts
    # Plaintext from the other node to the HTTP ports that accept it was steered into
    # the agent (telemetry); from this node it went straight to the workload. For
    # DISABLE, node a's agent also spoke plaintext to it (auto-mTLS reads the
    # destination's PeerAuthentication), so two.
    assert counts.get(("10.250.2.22", "steered"), 0) == 1 and counts.get(("10.250.2.23", "steered"), 0) == 2, counts
    metrics = b.run(["curl", "-s", "http://127.0.0.1:15090/metrics"], cgroup=b.cgroup, check=True).stdout.splitlines()
    assert any(l.startswith("weft_inbound_plaintext_total{") and 'workload="production/strict-b"' in l and 'reason="strict_network"' in l
               for l in metrics), [l for l in metrics if "plaintext" in l]
    steered = [l for l in metrics if l.startswith("istio_requests_total{") and 'reporter="destination"' in l
               and 'destination_workload="permissive-b"' in l and 'connection_security_policy="none"' in l]
    assert steered and steered[0].endswith(" 1"), steered
    # The witnesses: the filter is on the interface, and goes with the agent.
    shown = sh(["tc", "-n", b.ns, "filter", "show", "dev", mesh.devs["b"], "ingress"]).stdout
    assert "weft_tc_eth" in shown, shown
    b.stop_agent()
    assert "weft_tc_eth" not in sh(["tc", "-n", b.ns, "filter", "show", "dev", mesh.devs["b"], "ingress"]).stdout


def test_plaintext_meets_authorization_policy(mesh):
    """A PERMISSIVE workload under a policy that denies /secret to anyone without a
    principal (Istio's idiom for "mTLS only here"): plaintext from another node is
    steered into the agent and gets 403 there; plaintext from the same node, which no TC
    program sees, is refused rather than let past the policy."""
    setup(mesh, """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: secret-needs-mtls, namespace: default}
spec:
  selector: {matchLabels: {app: permissive}}
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}], to: [{operation: {paths: ["/secret"]}}]}]
""")
    a, b = mesh.a, mesh.b
    url = "http://10.250.2.22:8080"
    assert curl(a, url + "/public") == "200"
    assert curl(a, url + "/secret") == "403"
    assert curl(a, url + "/%73ecret") == "403"  # normalized before matching
    assert curl(b, url + "/public") == "refused"
    # The meshed client has a principal: allowed.
    assert curl(a, "http://10.96.8.2/secret", os.path.join(a.cgroup, "client-a")) == "200"
    assert [(r["path"], identities(b, "permissive")[i]) for i, r in enumerate(b.requests_seen("permissive"))] == [
        ("/public", None), ("/secret", "spiffe://cluster.local/ns/default/sa/client-a")]
    counts = inbound_counts(b)
    assert counts.get(("10.250.2.22", "steered")) == 3 and counts.get(("10.250.2.22", "unsteerable"), 0) >= 1, counts
    # An agent that died leaves its programs attached and nobody to apply the policy:
    # steering fails closed instead of letting plaintext through.
    b.stop_agent(signal.SIGKILL)
    assert curl(a, url + "/public") == "refused"
    assert inbound_counts(b).get(("10.250.2.22", "no_listener"), 0) >= 1
