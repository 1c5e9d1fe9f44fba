"""weft ca: the CA files an operator creates, checked by openssl (a real peer)."""
import os
import stat
import subprocess
import tempfile

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
