"""weft ca: the CA files an operator creates, checked by openssl (a real peer)."""
import json
import os
import stat
import subprocess
import tempfile
import time

from conftest import WEFT


def test_ca_init_and_issue_node_verify_with_openssl():
    with tempfile.TemporaryDirectory(prefix="weft-test-ca-") as d:
        root, node = os.path.join(d, "root"), os.path.join(d, "node-a")
        subprocess.run([WEFT, "ca", "init", "--out", root, "--trust-domain", "example.org"], check=True, capture_output=True)
        subprocess.run([WEFT, "ca", "issue-node", "--ca", root, "--node", "node-a", "--out", node], check=True, capture_output=True)
        assert stat.S_IMODE(os.stat(os.path.join(root, "ca.key")).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.join(node, "ca.key")).st_mode) == 0o600
        v = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(root, "ca.pem"), os.path.join(node, "ca.pem")],
                           capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.strip().endswith(": OK"), v.stdout + v.stderr
        text = subprocess.run(["openssl", "x509", "-in", os.path.join(node, "ca.pem"), "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        assert "CA:TRUE, pathlen:0" in text and "Certificate Sign" in text and "prime256v1" in text
        # No overwriting a CA, and a node CA cannot mint node CAs: one line, exit 1.
        again = subprocess.run([WEFT, "ca", "init", "--out", root], capture_output=True, text=True)
        assert again.returncode == 1 and "already holds a CA" in again.stderr
        sub = subprocess.run([WEFT, "ca", "issue-node", "--ca", node, "--node", "x", "--out", os.path.join(d, "x")],
                             capture_output=True, text=True)
        assert sub.returncode == 1 and sub.stderr.count("\n") == 1


WE = """apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: shop
  annotations: {weft.io/node: node-a}
spec:
  address: 10.1.9.50
  serviceAccount: web-frontend
"""


def certs(sandbox):
    return json.loads(sandbox.weft("cert", "show", "-j", "--admin-socket", sandbox.sock).stdout)


def test_agent_mints_renews_and_chains_to_its_root(sandbox):
    sandbox.write("we.yaml", WE)
    sandbox.start_agent("--cert-ttl", "4")
    c = certs(sandbox)
    assert [(x["workload"], x["identity"]) for x in c] == [("shop/frontend", "spiffe://cluster.local/ns/shop/sa/web-frontend")]
    root = os.path.join(sandbox.state, "ca", "ca.pem")
    assert stat.S_IMODE(os.stat(os.path.join(sandbox.state, "ca", "ca.key")).st_mode) == 0o600
    chain = os.path.join(sandbox.tmp, "chain.pem")
    open(chain, "w").write(c[0]["chainPEM"])
    v = subprocess.run(["openssl", "verify", "-CAfile", root, chain], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    text = subprocess.run(["openssl", "x509", "-in", chain, "-noout", "-text"], capture_output=True, text=True, check=True).stdout
    assert "URI:spiffe://cluster.local/ns/shop/sa/web-frontend" in text
    subject = subprocess.run(["openssl", "x509", "-in", chain, "-noout", "-subject"], capture_output=True, text=True).stdout
    assert subject.strip() in ("subject=", "subject= ")          # empty subject, identity in the SAN only
    # Renewed at half life: a new serial within the TTL.
    first = c[0]["serial"]
    deadline = time.time() + 8
    while time.time() < deadline and certs(sandbox)[0]["serial"] == first:
        time.sleep(0.2)
    assert certs(sandbox)[0]["serial"] != first
    # The workload leaves the node: its certificate goes.
    os.remove(os.path.join(sandbox.config, "we.yaml"))
    sandbox.wait_log(r"config revision 2 applied")
    assert certs(sandbox) == []


def test_agent_refuses_another_nodes_ca(sandbox):
    d = os.path.join(sandbox.tmp, "pki")
    subprocess.run([WEFT, "ca", "init", "--out", d + "/root"], check=True, capture_output=True)
    subprocess.run([WEFT, "ca", "issue-node", "--ca", d + "/root", "--node", "node-b", "--out", d + "/node-b"], check=True, capture_output=True)
    sandbox.start_agent("--ca", d + "/node-b", wait=False)
    assert sandbox.agent.wait(timeout=20) != 0
    assert "is the CA of node node-b, not of this node node-a" in sandbox.log()
    subprocess.run([WEFT, "ca", "issue-node", "--ca", d + "/root", "--node", "node-a", "--out", d + "/node-a"], check=True, capture_output=True)
    sandbox.write("we.yaml", WE)
    sandbox.start_agent("--ca", d + "/node-a")
    chain = os.path.join(sandbox.tmp, "chain.pem")
    open(chain, "w").write(certs(sandbox)[0]["chainPEM"])
    v = subprocess.run(["openssl", "verify", "-CAfile", d + "/root/ca.pem", "-untrusted", d + "/node-a/ca.pem", chain],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
