"""`weft monitor`: live flows from the kernel's ring buffer and the agent's requests.

Each test runs real clients (curl, Python sockets) in workload cgroups and reads what
`weft monitor` printed, as an operator would pipe it into jq."""
import json
import os
import signal
import subprocess
import time

from conftest import WEFT
from test_mtls import CLIENT_ID, setup

# Services of the tests: one with no backend at all, and STRICT on node b's web.
EXTRA = """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: nowhere, namespace: default}
spec:
  hosts: [nowhere.default.svc.cluster.local]
  addresses: [10.96.7.9]
  ports: [{number: 80, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: nowhere}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-strict, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
"""


class Monitor:
    """`weft monitor -j ARGS` running until stopped; its flows parsed at the end."""

    def __init__(self, node, *args, agent=True):
        argv = [WEFT, "monitor", "-j", "--bpffs", node.bpffs, "--admin-socket", node.sock if agent else node.sock + ".none"] + list(args)
        # O_APPEND: reading moves the offset this file shares with the monitor's stdout.
        self.out = open(os.path.join(node.tmp, "monitor-%d.out" % time.monotonic_ns()), "a+")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.PIPE, text=True)
        node.procs.append(self.proc)
        time.sleep(1.0)  # attached (and the kernel told) before the traffic starts
        assert self.proc.poll() is None, self.proc.stderr.read()

    def flows(self):
        self.out.flush()
        self.out.seek(0)
        return [json.loads(line) for line in self.out.read().splitlines() if line.strip()]

    def wait_for(self, pred, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            fs = [f for f in self.flows() if pred(f)]
            if fs:
                return fs
            time.sleep(0.1)
        fs = self.flows()
        raise AssertionError("no such flow in %d flows; the last: %s" % (len(fs), fs[-5:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        return self.flows()


def test_monitor_shows_connects_inbound_drops_and_requests(mesh):
    frontend = setup(mesh, extra=EXTRA, start=False)
    a, b = mesh.a, mesh.b
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), node="node-a")
    b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), "--interfaces", mesh.devs["b"], node="node-b")
    mon_a = Monitor(a)
    mon_b = Monitor(b)
    refused = Monitor(a, "--verdict", "no-backend")
    web_only = Monitor(a, "--from", "frontend", "--service", "web")

    assert a.http("http://10.96.7.7/", 5, cgroup=frontend)["statuses"] == {"200": 5}
    r = a.run(["curl", "-s", "-o", "/dev/null", "--max-time", "3", "http://10.96.7.9/"], cgroup=frontend)
    assert r.returncode == 7, r  # connection refused, by the kernel, at connect()
    # Plaintext from node a's own network stack (no workload, no agent) to web's STRICT
    # port on node b: node b's TC program drops the SYN.
    r = a.run(["curl", "-s", "-o", "/dev/null", "--max-time", "2", "http://10.250.2.10:8080/"], cgroup=a.cgroup)
    assert r.returncode != 0, r
    assert len(b.requests_seen("web")) == 5, "plaintext reached the STRICT workload"

    # Node a: the frontend's connect() to web's VIP went to the agent, the agent's
    # request, and the connect() refused for want of a backend — named by the agent.
    captured = mon_a.wait_for(lambda f: f["type"] == "connect" and f.get("verdict") == "captured")
    c = captured[0]
    assert c["source"]["workload"] == "default/frontend" and c["destination"] == {"ip": "10.96.7.7", "port": 80}, c
    assert c["service"] == "default/web" and c["protocol"] == "tcp" and c["backend"].endswith(":15001"), c
    reqs = mon_a.wait_for(lambda f: f["type"] == "request")
    assert len(reqs) >= 1
    req = reqs[0]
    assert req["method"] == "GET" and req["path"] == "/" and req["status"] == 200 and req["verdict"] == "forwarded", req
    assert req["source"]["workload"] == "default/frontend" and req["source"]["principal"] == CLIENT_ID, req
    assert req["destination"]["workload"] == "default/web-b" and req["reporter"] == "source" and req["service"] == "default/web", req
    mon_a.wait_for(lambda f: len([g for g in mon_a.flows() if g["type"] == "request"]) == 5)
    nb = mon_a.wait_for(lambda f: f.get("verdict") == "no-backend")[0]
    assert nb["type"] == "connect" and nb["destination"] == {"ip": "10.96.7.9", "port": 80} and nb["service"] == "default/nowhere", nb
    assert nb["source"]["workload"] == "default/frontend", nb

    # Node b: the same requests arriving through the tunnel with the verified identity,
    # and the plaintext SYN dropped at TC because web is STRICT.
    arrived = mon_b.wait_for(lambda f: f["type"] == "request" and f["reporter"] == "destination")
    assert arrived[0]["source"]["principal"] == CLIENT_ID and arrived[0]["status"] == 200, arrived[0]
    drop = mon_b.wait_for(lambda f: f["type"] == "inbound")[0]
    assert drop["verdict"] == "dropped" and drop["reason"] == "STRICT mTLS, at TC ingress", drop
    assert drop["source"]["ip"] == "10.99.0.1" and drop["destination"]["ip"] == "10.250.2.10" and drop["destination"]["port"] == 8080, drop
    assert drop["destination"]["workload"] == "default/web-b", drop

    # Filters: only what was asked for.
    got = refused.stop()
    assert got and all(f["verdict"] == "no-backend" for f in got), got
    got = web_only.stop()
    kinds = {f["type"] for f in got}
    assert kinds == {"connect", "request"}, got
    assert all(f["service"] == "default/web" and f["source"]["workload"] == "default/frontend" for f in got), got

    # Text for people: one line per flow.
    text = subprocess.Popen([WEFT, "monitor", "--admin-socket", a.sock, "--count", "2"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert a.http("http://10.96.7.7/", 1, cgroup=frontend)["statuses"] == {"200": 1}
    out, _ = text.communicate(timeout=15)
    lines = sorted(out.splitlines(), key=lambda l: l.split()[1])  # the kernel's and the agent's flows race
    assert len(lines) == 2, out
    assert " connect default/frontend -> 10.96.7.7:80 (default/web) => " in lines[0] and lines[0].endswith("CAPTURED"), lines
    assert " request default/frontend -> web.default.svc.cluster.local GET / 200 => 10.250.2.10:8080 FORWARDED" in lines[1], lines

    # A mistyped verdict is one clear line.
    r = subprocess.run([WEFT, "monitor", "--admin-socket", a.sock, "--verdict", "dropt"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "no verdict dropt" in r.stderr, r
    mon_a.stop()
    mon_b.stop()


def flood(node, cgroup, vip, count):
    """`count` connect() calls to a VIP without backends from `cgroup`, as fast as Python
    goes; each must be refused at once (the datapath does not wait for any reader)."""
    code = ("import socket, time, errno\n"
            "t = time.monotonic(); refused = 0\n"
            "for _ in range(%d):\n"
            "    s = socket.socket()\n"
            "    try: s.connect(('%s', 80))\n"
            "    except ConnectionRefusedError: refused += 1\n"
            "    finally: s.close()\n"
            "print(refused, time.monotonic() - t)\n" % (count, vip))
    r = node.run(["python3", "-c", code], cgroup=cgroup, check=True)
    refused, took = r.stdout.split()
    assert int(refused) == count, r.stdout
    return float(took)


def accounted(flows):
    shown = sum(1 for f in flows if f["type"] == "connect" and f["verdict"] == "no-backend")
    lost = {"kernel": 0, "agent": 0}
    for f in flows:
        if f["type"] == "lost":
            lost[f["lostAt"]] += f["lost"]
    return shown, lost


def test_monitor_counts_what_it_loses_and_works_without_the_agent(mesh):
    frontend = setup(mesh, extra=EXTRA, start=False)
    a = mesh.a
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), "--keep-datapath", node="node-a")
    n = 15000  # more than the ring buffer (~11,900 events) or a monitor's queue holds

    # Through the agent: a monitor that stops reading (SIGSTOP) fills its queue; the agent
    # counts what did not fit and tells it so when it reads again. Every connect() made
    # during that time was refused at once, and every one is accounted for.
    mon = Monitor(a, "--service", "nowhere")
    mon.proc.send_signal(signal.SIGSTOP)
    took = flood(a, frontend, "10.96.7.9", n)
    time.sleep(1.0)
    mon.proc.send_signal(signal.SIGCONT)
    mon.wait_for(lambda f: f["type"] == "lost", timeout=60)  # a debug build's monitor reads ~3,000 flows/s
    time.sleep(2.0)
    shown, lost = accounted(mon.stop())
    assert lost["agent"] > 0, (shown, lost)
    assert shown + lost["agent"] + lost["kernel"] == n, (shown, lost, took)

    # Without the agent (stopped, datapath kept): `weft monitor` reads the ring buffer
    # itself; sources are named by address (weft_wl_v1), not by workload.
    assert a.stop_agent() == 0
    mon = Monitor(a, agent=False)
    assert "no agent at" in mon.proc.stderr.readline()
    r = a.run(["curl", "-s", "-o", "/dev/null", "--max-time", "3", "http://10.96.7.9/"], cgroup=frontend)
    assert r.returncode == 7, r
    nb = mon.wait_for(lambda f: f.get("verdict") == "no-backend")[0]
    assert nb["source"] == {"ip": "10.250.1.10"} and nb["destination"] == {"ip": "10.96.7.9", "port": 80} and "service" not in nb, nb

    # The kernel's own loss accounting: a stopped reader, the ring buffer full.
    before, _ = accounted(mon.flows())
    mon.proc.send_signal(signal.SIGSTOP)
    took = flood(a, frontend, "10.96.7.9", n)
    mon.proc.send_signal(signal.SIGCONT)
    mon.wait_for(lambda f: f["type"] == "lost", timeout=60)
    time.sleep(1.5)
    shown, lost = accounted(mon.stop())
    assert lost["kernel"] > 0 and lost["agent"] == 0, (shown, lost)
    assert shown - before + lost["kernel"] == n, (shown, before, lost, took)

    # One reader at a time: a second one is told who has the ring buffer.
    first = Monitor(a, "--kernel-only")
    r = subprocess.run([WEFT, "monitor", "--kernel-only", "--bpffs", a.bpffs, "--duration", "1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "another reader has the kernel's flow events" in r.stderr, r
    first.stop()
    # A reader gone, the kernel stops writing within the lease (3 s): nothing is lost
    # while nobody reads.
    time.sleep(3.5)
    flood(a, frontend, "10.96.7.9", 2000)
    mon = Monitor(a, agent=False)
    time.sleep(1.5)
    shown, lost = accounted(mon.stop())
    assert shown == 0 and lost["kernel"] == 0, (shown, lost)
    # What the agent left pinned goes with this test's sandbox (closed by the fixture).
