"""Cluster mode: three agents on three node namespaces follow one config in a real
3-member etcd (Debian's etcd-server) and report back; `weft apply --etcd --wait` answers
"has my change reached every node?" and names the nodes that did not, and why."""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from conftest import CG2, WEFT, Sandbox, kill_cgroup, service_yaml, sh

VIP = "10.96.0.10"
BACKEND = "10.250.1.1"


class EtcdCluster:
    """Three etcd members in a namespace of their own (bridge 10.98.0.0/24, members on
    .1-.3), and nodes joined to that bridge by veth pairs (node i at 10.98.0.1i)."""

    def __init__(self, members=3, member_flags=(), tls=False):
        self.member_flags = list(member_flags)
        self.id = "weft-test-" + uuid.uuid4().hex[:8]
        self.ns = self.id
        self.cgroup = os.path.join(CG2, self.id)
        self.tmp = tempfile.mkdtemp(prefix=self.id + "-")
        os.makedirs(self.cgroup)
        sh(["ip", "netns", "add", self.ns])
        sh(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", self.ns, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.ns, "link", "set", "br0", "up"])
        self.addrs = ["10.98.0.%d" % (i + 1) for i in range(members)]
        for a in self.addrs:
            sh(["ip", "-n", self.ns, "addr", "add", a + "/24", "dev", "br0"])
        self.names = ["m%d" % i for i in range(members)]
        self.initial = ",".join("%s=http://%s:2380" % (n, a) for n, a in zip(self.names, self.addrs))
        self.procs = [None] * members
        scheme = "https" if tls else "http"
        self.endpoints = ",".join("%s://%s:2379" % (scheme, a) for a in self.addrs)
        # https: a CA of the test's (openssl), a server certificate per member (IP SANs),
        # and a client certificate the members require.
        self.client_args = []
        if tls:
            self.pki = self.make_pki()
            self.member_flags += ["--cert-file", self.pki["server.pem"], "--key-file", self.pki["server.key"],
                                  "--trusted-ca-file", self.pki["ca.pem"], "--client-cert-auth"]
            self.client_args = ["--etcd-ca", self.pki["ca.pem"], "--etcd-cert", self.pki["client.pem"],
                                "--etcd-key", self.pki["client.key"]]
        for i in range(members):
            self.start_member(i, new=True)
        self.wait_healthy()
        self.links = 0

    def in_ns(self, argv):
        return ["sh", "-c", "echo $$ > %s/cgroup.procs; exec nsenter --net=/run/netns/%s \"$@\"" % (self.cgroup, self.ns), "sh"] + argv

    def make_pki(self):
        d = os.path.join(self.tmp, "pki")
        os.makedirs(d)
        p = {n: os.path.join(d, n) for n in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")}
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        sh(["openssl", "req", "-x509"] + ec + ["-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "1", "-subj", "/CN=etcd test CA"])
        sans = ",".join("IP:" + a for a in self.addrs)
        for who, extra in (("server", "subjectAltName=%s\nextendedKeyUsage=serverAuth" % sans),
                           ("client", "extendedKeyUsage=clientAuth")):
            csr = os.path.join(d, who + ".csr")
            ext = os.path.join(d, who + ".ext")
            open(ext, "w").write(extra + "\n")
            sh(["openssl", "req"] + ec + ["-keyout", p[who + ".key"], "-out", csr, "-subj", "/CN=weft " + who])
            sh(["openssl", "x509", "-req", "-in", csr, "-CA", p["ca.pem"], "-CAkey", p["ca.key"], "-CAcreateserial",
                "-out", p[who + ".pem"], "-days", "1", "-extfile", ext])
        return p

    def start_member(self, i, new=False):
        name, addr = self.names[i], self.addrs[i]
        client_url = self.endpoints.split(",")[i]
        argv = ["etcd", "--name", name, "--data-dir", os.path.join(self.tmp, name),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", "http://%s:2380" % addr, "--initial-advertise-peer-urls", "http://%s:2380" % addr,
                "--initial-cluster", self.initial, "--initial-cluster-state", "new", "--initial-cluster-token", self.id,
                "--logger", "zap", "--log-level", "error"] + self.member_flags
        log = open(os.path.join(self.tmp, name + ".log"), "a")
        self.procs[i] = subprocess.Popen(self.in_ns(argv), stdout=log, stderr=subprocess.STDOUT)

    def stop_member(self, i):
        p = self.procs[i]
        if p and p.poll() is None:
            p.kill()
            p.wait()
        self.procs[i] = None

    def etcdctl(self, *args, endpoints=None):
        env = dict(os.environ, ETCDCTL_API="3")
        tls = ["--cacert", self.pki["ca.pem"], "--cert", self.pki["client.pem"], "--key", self.pki["client.key"]] if self.client_args else []
        return subprocess.run(self.in_ns(["etcdctl", "--endpoints", endpoints or self.endpoints] + tls + list(args)),
                              capture_output=True, text=True, timeout=30, env=env)

    def wait_healthy(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            live = ",".join(u for u, p in zip(self.endpoints.split(","), self.procs) if p)
            if self.etcdctl("endpoint", "health", endpoints=live).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("etcd did not become healthy: " + self.etcdctl("endpoint", "health").stderr)

    def join(self, node):
        """A veth from node's namespace to the bridge; returns the node's device."""
        self.links += 1
        dev, peer = "e%s%d" % (self.id[-6:], self.links), "n%s%d" % (self.id[-6:], self.links)
        sh(["ip", "-n", node.ns, "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", self.ns])
        sh(["ip", "-n", node.ns, "addr", "add", "10.98.0.%d/24" % (10 + self.links), "dev", dev])
        sh(["ip", "-n", node.ns, "link", "set", dev, "up"])
        sh(["ip", "-n", self.ns, "link", "set", peer, "master", "br0", "up"])
        return dev

    def weft(self, *args, check=True, timeout=120):
        """A weft command against the cluster, from the etcd namespace (an operator's host)."""
        r = subprocess.run(self.in_ns([WEFT] + list(args) + ["--etcd", self.endpoints] + self.client_args), capture_output=True,
                           text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, "weft %s: %s%s" % (" ".join(args), r.stdout, r.stderr)
        return r

    def status(self):
        return json.loads(self.weft("status", "--cluster", "-j").stdout)

    def close(self):
        for i in range(len(self.procs)):
            self.stop_member(i)
        kill_cgroup(self.cgroup)
        sh(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Cluster:
    def __init__(self, nodes=3):
        self.etcd = EtcdCluster()
        self.nodes = [Sandbox() for _ in range(nodes)]
        self.names = ["node-%s" % c for c in "abc"[:nodes]]
        self.devs = [self.etcd.join(n) for n in self.nodes]
        for n, name in zip(self.nodes, self.names):
            # Each node's own backend behind the same service address: traffic on a node
            # proves that node's datapath follows the cluster's config.
            n.backend(name, BACKEND)

    def start(self, i, wait=True):
        n = self.nodes[i]
        n.start_agent("--etcd", self.etcd.endpoints, node=self.names[i], wait=False)
        if wait:
            n.wait_log(r"cluster mode: config from etcd")

    def start_all(self):
        for i in range(len(self.nodes)):
            self.start(i)
        self.wait_live(len(self.nodes))

    def wait_live(self, count, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows = self.etcd.status()
            if len(rows) == count:
                return rows
            time.sleep(0.2)
        raise AssertionError("live nodes: %s" % self.etcd.status())

    def served(self, i, count=6):
        """Which backends answer the service on node i."""
        return self.nodes[i].client("tcp", VIP, 80, count, "--timeout", "2")

    def close(self):
        for n in self.nodes:
            n.close()
        self.etcd.close()


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.close()
        assert c.etcd.ns not in sh("ip netns list").stdout, "namespace left behind"
        assert not os.path.exists(c.etcd.cgroup), "cgroup left behind"


def policy(etcd, name, text):
    """A policy file an operator would apply to the cluster."""
    path = os.path.join(etcd.tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_one_apply_reaches_every_node_and_traffic_follows(cluster):
    c = cluster
    c.start_all()
    web = policy(c.etcd, "web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    out = c.etcd.weft("apply", "-f", web, "--wait", "--timeout", "30").stdout
    assert "applied: cluster revision 1" in out and "3 live node(s) serve revision 1" in out, out
    for i, name in enumerate(c.names):
        got = c.served(i)
        assert got["backends"] == {name: 6}, (got, c.nodes[i].log(), c.nodes[i].services())
    rows = {r["node"]: r for r in c.etcd.status()}
    assert sorted(rows) == c.names
    assert all(r["status"]["appliedRevision"] == 1 and r["lag"] == 0 for r in rows.values()), rows
    table = c.etcd.weft("status", "--cluster").stdout
    assert "cluster revision 1; 3 live node(s)" in table, table
    # Every node serves what was written, to the byte: its content hash is the writer's.
    written = json.loads(c.etcd.weft("history", "-j").stdout)[-1]["contentHash"]
    for n in c.nodes:
        assert json.loads(n.weft("status", "--admin-socket", n.sock).stdout)["contentHash"] == written
    # Every agent now follows etcd: a push to one agent's socket is refused.
    n = c.nodes[0]
    refused = n.weft("apply", "-f", web, "--admin-socket", n.sock, check=False)
    assert refused.returncode == 1 and "follows etcd" in refused.stderr, refused.stderr
    # A delete also reaches every node: the service is gone everywhere.
    out = c.etcd.weft("delete", "-f", web, "--wait").stdout
    assert "3 live node(s) serve revision 2" in out, out
    for i in range(3):
        assert c.served(i, 2)["backends"] == {}


def test_a_node_that_rejects_a_revision_is_named_and_the_others_apply_it(cluster):
    c = cluster
    # Node c's own config dir defines the service too: the cluster's copy is refused there.
    c.nodes[2].write("web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    c.start_all()
    web = policy(c.etcd, "web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    r = c.etcd.weft("apply", "-f", web, "--wait", "--timeout", "20", check=False)
    assert r.returncode == 1, r.stdout
    assert "node-c: rejected revision 1:" in r.stdout and "CFG002" in r.stdout, r.stdout
    assert "2 node(s) serve it, 1 rejected it, 0 did not answer in time" in r.stderr, r.stderr
    rows = {x["node"]: x for x in c.etcd.status()}
    assert rows["node-c"]["status"]["observedRevision"] == 1 and rows["node-c"]["status"]["appliedRevision"] == 0
    assert rows["node-a"]["status"]["appliedRevision"] == 1 and rows["node-b"]["status"]["appliedRevision"] == 1
    # Node c still serves its own file's service; a and b the cluster's.
    for i, name in enumerate(c.names):
        assert c.served(i)["backends"] == {name: 6}


def test_a_dead_node_drops_out_instead_of_blocking_wait(cluster):
    c = cluster
    c.start_all()
    c.nodes[1].agent.kill()  # no clean leave: only its lease's expiry removes it
    c.nodes[1].agent.wait()
    c.nodes[1].agent = None
    web = policy(c.etcd, "web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    r = c.etcd.weft("apply", "-f", web, "--wait", "--timeout", "45", check=False)
    # Either the lease (30 s) expired within the wait, or node-b is named as not answering.
    assert ("2 live node(s) serve revision 1" in r.stdout) or ("node-b: still at revision 0" in r.stdout), r.stdout + r.stderr
    rows = c.wait_live(2, timeout=40)
    assert sorted(x["node"] for x in rows) == ["node-a", "node-c"]
    assert "2 live node(s) serve revision 1" in c.etcd.weft("apply", "-f", web, "--wait").stdout


def test_etcd_member_down_then_all_down_then_back(cluster):
    c = cluster
    c.start_all()
    web = policy(c.etcd, "web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    c.etcd.weft("apply", "-f", web, "--wait")
    # One member down (the first, which every client picks first): nothing noticed.
    c.etcd.stop_member(0)
    two = policy(c.etcd, "two.yaml", service_yaml("web", [VIP, "10.96.0.11"], [(BACKEND, 1)]))
    out = c.etcd.weft("apply", "-f", two, "--wait", "--timeout", "30").stdout
    assert "3 live node(s) serve revision 2" in out, out
    # All down: every node keeps serving revision 2.
    for i in (1, 2):
        c.etcd.stop_member(i)
    for i, name in enumerate(c.names):
        assert c.served(i)["backends"] == {name: 6}
    # An agent restarted during the outage starts on its persisted revision.
    n = c.nodes[0]
    n.stop_agent()
    c.start(0)
    n.wait_log(r"config revision \d+ applied")
    assert c.nodes[0].client("tcp", "10.96.0.11", 80, 4, "--timeout", "2")["backends"] == {"node-a": 4}
    status = json.loads(n.weft("status", "--admin-socket", n.sock).stdout)
    assert status["clusterRevision"] == 2, status
    # etcd back: the nodes report again (the restarted one included).
    for i in range(3):
        c.etcd.start_member(i)
    c.etcd.wait_healthy()
    rows = c.wait_live(3, timeout=40)
    assert all(r["status"]["appliedRevision"] == 2 for r in rows), rows


def test_racing_applies_one_wins_each_revision_and_nothing_is_half_written(cluster):
    c = cluster
    c.start(0)
    c.wait_live(1)
    files = [policy(c.etcd, "s%d.yaml" % i, service_yaml("s%d" % i, ["10.96.1.%d" % i], [(BACKEND, 1)])) for i in range(8)]
    results = [None] * len(files)

    def push(i):
        results[i] = c.etcd.weft("apply", "-f", files[i], check=False)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [i for i, r in enumerate(results) if r.returncode == 0]
    lost = [i for i, r in enumerate(results) if r.returncode != 0]
    for i in lost:
        assert "conflict: revision" in results[i].stderr and "nothing was written" in results[i].stderr, results[i].stderr
    assert won, [r.stderr for r in results]
    # Each winner made one revision; the config holds exactly the winners' services.
    history = json.loads(c.etcd.weft("history", "-j").stdout)
    assert [h["revision"] for h in history] == list(range(1, len(won) + 1))
    names = sorted(line.split()[2] for line in c.etcd.weft("get", "se").stdout.splitlines()[1:])
    assert names == sorted("s%d" % i for i in won)


def test_a_watch_behind_compaction_relists_and_converges(cluster):
    c = cluster
    c.start_all()
    web = policy(c.etcd, "web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    c.etcd.weft("apply", "-f", web, "--wait")
    # Node b loses etcd; two revisions are written and etcd compacts their history away.
    sh(["ip", "-n", c.nodes[1].ns, "link", "set", c.devs[1], "down"])
    two = policy(c.etcd, "two.yaml", service_yaml("web", [VIP, "10.96.0.11"], [(BACKEND, 1)]))
    c.etcd.weft("apply", "-f", two)
    three = policy(c.etcd, "three.yaml", service_yaml("web", [VIP, "10.96.0.12"], [(BACKEND, 1)]))
    c.etcd.weft("apply", "-f", three)
    rev = json.loads(c.etcd.etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"]["revision"]
    assert c.etcd.etcdctl("compact", str(rev)).returncode == 0
    # Long enough for node b's agent to give its connection up (keepalive: 10 s + 5 s), so
    # that it watches again from the revision it had, which etcd no longer keeps.
    c.nodes[1].wait_log(r"etcd unavailable", timeout=30)
    sh(["ip", "-n", c.nodes[1].ns, "link", "set", c.devs[1], "up"])
    out = c.etcd.weft("apply", "-f", three, "--wait", "--timeout", "40").stdout
    assert "3 live node(s) serve revision 3" in out, out
    assert c.served(1)["backends"] == {"node-b": 6}
    assert c.nodes[1].client("tcp", "10.96.0.12", 80, 2, "--timeout", "2")["backends"] == {"node-b": 2}
    assert "fell behind compaction" in c.nodes[1].log()


def join_mesh(mesh, etcd):
    """The two nodes of `mesh` on `etcd`'s bridge, with test_mtls's workloads (frontend on
    a, web on b); returns the frontend's cgroup."""
    a, b = mesh.a, mesh.b
    for node in (a, b):
        etcd.join(node)
    for node, cg in ((a, "frontend"), (b, "web")):
        os.makedirs(os.path.join(node.cgroup, cg), exist_ok=True)
    a.add_address("10.250.1.10")
    b.http_backend("web", "10.250.2.10", 8080)
    return os.path.join(a.cgroup, "frontend")


def test_nodes_trust_each_other_through_their_registrations(mesh):
    """Two nodes with CAs of their own (no shared root, no --trust-bundle): the tunnel
    between them works because each registered its CA root in etcd; a node not in the
    cluster is not trusted."""
    from test_mtls import CONFIG, WEB_ID, CLIENT_ID
    a, b = mesh.a, mesh.b
    etcd = EtcdCluster()
    try:
        frontend = join_mesh(mesh, etcd)
        cfg = policy(etcd, "mesh.yaml", CONFIG)
        etcd.weft("apply", "-f", cfg)
        # Node b outside the cluster, on the same config from its own dir: it does not
        # know node a's root, so a's client certificate is refused there.
        b.write("mesh.yaml", CONFIG)
        b.start_agent(node="node-b")
        a.start_agent("--etcd", etcd.endpoints, node="node-a", wait=False)
        a.wait_log(r"cluster revision 1 in force")
        r = a.http("http://10.96.7.7/", 2, cgroup=frontend)
        assert "200" not in r["statuses"], r
        assert b.requests_seen("web") == []
        # Node b joins the cluster (its file config goes; the cluster's is the same).
        b.stop_agent()
        os.remove(os.path.join(b.config, "mesh.yaml"))
        b.start_agent("--etcd", etcd.endpoints, node="node-b", wait=False)
        b.wait_log(r"cluster revision 1 in force")
        deadline = time.time() + 20
        while time.time() < deadline:
            r = a.http("http://10.96.7.7/", 5, cgroup=frontend)
            if r["statuses"] == {"200": 5}:
                break
            time.sleep(0.5)
        assert r["statuses"] == {"200": 5}, r
        seen = b.requests_seen("web")
        assert seen and all(q["headers"]["x-forwarded-client-cert"] == "By=%s;URI=%s" % (WEB_ID, CLIENT_ID) for q in seen)
    finally:
        etcd.close()



def test_a_ca_rotation_goes_through_the_store_without_a_failed_request(mesh):
    """Node b rotates its own CA with only its own files touched: the next root in its
    --trust-bundle (registered, so node a trusts it), the switch of its signer, the old
    root dropped (unregistered, so node a stops trusting it). Requests a → b succeed at
    every step."""
    from test_mtls import CONFIG
    a, b = mesh.a, mesh.b
    etcd = EtcdCluster()
    try:
        frontend = join_mesh(mesh, etcd)
        r1, r2 = os.path.join(b.tmp, "r1"), os.path.join(b.tmp, "r2")
        signer = os.path.join(b.tmp, "signer")
        for d in (r1, r2):
            sh([WEFT, "ca", "init", "--node", "node-b", "--out", d])
        shutil.copytree(r1, signer)
        bundle = os.path.join(b.tmp, "bundle.pem")
        open(bundle, "w").close()
        etcd.weft("apply", "-f", policy(etcd, "mesh.yaml", CONFIG))
        a.start_agent("--etcd", etcd.endpoints, node="node-a", wait=False)
        b.start_agent("--etcd", etcd.endpoints, "--ca", signer, "--trust-bundle", bundle, node="node-b", wait=False)
        for n in (a, b):
            n.wait_log(r"cluster revision 1 in force")

        def ok():
            deadline = time.time() + 20
            while True:
                r = a.http("http://10.96.7.7/", 3, cgroup=frontend)
                if r["statuses"] == {"200": 3} or time.time() > deadline:
                    return r["statuses"]
                time.sleep(0.3)

        assert ok() == {"200": 3}
        # 1. The next root goes into b's bundle: b registers it, a trusts it.
        mark = len(a.log())
        with open(bundle, "w") as f:
            f.write(open(os.path.join(r2, "ca.pem")).read())
        a.wait_log(r"trust bundle now holds 3 root\(s\)", after=mark)
        assert a.http("http://10.96.7.7/", 3, cgroup=frontend)["statuses"] == {"200": 3}
        # 2. b's signer switches to the next CA: its certificates are minted anew.
        mark_b = len(b.log())
        for name in os.listdir(r2):
            shutil.copy(os.path.join(r2, name), os.path.join(signer, name))
        b.wait_log(r"signer switched", after=mark_b)
        assert a.http("http://10.96.7.7/", 3, cgroup=frontend)["statuses"] == {"200": 3}
        # 3. The old root leaves b's registration (b's bundle now names only the new one,
        # which is also its own): a drops it and still reaches b.
        mark = len(a.log())
        a.wait_log(r"trust bundle now holds 2 root\(s\)", after=mark, timeout=30)
        assert a.http("http://10.96.7.7/", 3, cgroup=frontend)["statuses"] == {"200": 3}
    finally:
        etcd.close()


def test_etcd_over_mutual_tls(sandbox):
    """Members that serve https and require a client certificate: weft's commands and an
    agent reach them with --etcd-ca/--etcd-cert/--etcd-key; without the certificate, or
    trusting another CA, a command fails in one line and writes nothing."""
    etcd = EtcdCluster(members=1, tls=True)
    try:
        etcd.join(sandbox)
        sandbox.backend("node-a", BACKEND)
        sandbox.start_agent("--etcd", etcd.endpoints, *etcd.client_args, node="node-a", wait=False)
        sandbox.wait_log(r"cluster mode: config from etcd")
        web = policy(etcd, "web.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
        out = etcd.weft("apply", "-f", web, "--wait", "--timeout", "20").stdout
        assert "1 live node(s) serve revision 1" in out, out
        assert sandbox.client("tcp", VIP, 80, 3, "--timeout", "2")["backends"] == {"node-a": 3}
        # No client certificate: refused by the member.
        bare = subprocess.run(etcd.in_ns([WEFT, "get", "se", "--etcd", etcd.endpoints, "--etcd-ca", etcd.pki["ca.pem"]]),
                              capture_output=True, text=True, timeout=60)
        assert bare.returncode == 1 and bare.stderr.startswith("weft: etcd ") and bare.stderr.count("\n") == 1, bare.stderr
        # Trusting another CA: the member's certificate is refused by weft.
        other = os.path.join(etcd.tmp, "other")
        sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            os.path.join(etcd.tmp, "other.key"), "-out", other, "-days", "1", "-subj", "/CN=other"])
        wrong = subprocess.run(etcd.in_ns([WEFT, "apply", "-f", web, "--etcd", etcd.endpoints, "--etcd-ca", other,
                                           "--etcd-cert", etcd.pki["client.pem"], "--etcd-key", etcd.pki["client.key"]]),
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 1 and wrong.stderr.startswith("weft: etcd "), wrong.stderr
        # Plaintext to an https member: refused the same way.
        plain = subprocess.run(etcd.in_ns([WEFT, "get", "se", "--etcd", etcd.endpoints.replace("https", "http")]),
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode == 1 and plain.stderr.startswith("weft: etcd "), plain.stderr
        assert json.loads(etcd.weft("history", "-j").stdout)[-1]["revision"] == 1
    finally:
        etcd.close()


def test_history_diff_and_rollback_through_etcd(cluster):
    c = cluster
    c.start(0)
    c.wait_live(1)
    one = policy(c.etcd, "one.yaml", service_yaml("web", [VIP], [(BACKEND, 1)]))
    two = policy(c.etcd, "two.yaml", service_yaml("web", ["10.96.0.11"], [(BACKEND, 1)]))
    c.etcd.weft("apply", "-f", one)
    assert c.etcd.weft("diff", "-f", one).stdout.strip() == "= ServiceEntry default/web"
    changed = c.etcd.weft("diff", "-f", two, check=False)
    assert changed.returncode == 1 and changed.stdout.startswith("~ ServiceEntry default/web"), changed.stdout
    c.etcd.weft("apply", "-f", two, "--wait")
    assert c.nodes[0].client("tcp", "10.96.0.11", 80, 2, "--timeout", "2")["backends"] == {"node-a": 2}
    out = c.etcd.weft("rollback", "1", "--wait").stdout
    assert "rolled back to revision 1: cluster revision 3" in out and "1 live node(s) serve revision 3" in out, out
    assert c.served(0, 2)["backends"] == {"node-a": 2}
    assert c.nodes[0].client("tcp", "10.96.0.11", 80, 2, "--timeout", "1")["backends"] == {}
    history = json.loads(c.etcd.weft("history", "-j").stdout)
    assert [(h["revision"], h["reason"].split(" by ")[0], h["current"]) for h in history] == \
        [(1, "apply", False), (2, "apply", False), (3, "rollback to 1", True)]
    assert history[0]["contentHash"] != history[1]["contentHash"]
    missing = c.etcd.weft("rollback", "9", check=False)
    assert missing.returncode == 1 and "revision 9 is not in the cluster's history" in missing.stderr, missing.stderr
    assert "web" in c.etcd.weft("get", "se", "web", "-o", "yaml").stdout
