"""DNS for workloads: the kernel sends a workload's queries (UDP and TCP port 53, whatever
resolver it asked) to the agent, which answers the mesh's hosts and their short forms
and forwards the rest to the node's resolvers — here dnsmasq, run in the test's
namespace. Real clients in the workload's cgroup: dig, getent, Python's getaddrinfo,
curl by name (those three through glibc, with the node's resolv.conf bind-mounted in a
mount namespace of their own)."""
import json
import os
import re
import socket
import struct
import subprocess
import time

UPSTREAM = "10.1.53.53"
ANYWHERE = "192.0.2.53"  # a resolver address nobody has: only the redirect can answer
CLIENT = "10.1.53.2"
VIP = "10.96.53.10"

CONFIG = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  addresses: [%(vip)s]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints: [{address: 10.1.53.11}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client
  namespace: prod
  annotations: {weft.io/node: node-a, weft.io/cgroup: client}
spec: {address: %(client)s, serviceAccount: client}
""" % {"vip": VIP, "client": CLIENT}


def run_dnsmasq(sandbox, *args):
    """dnsmasq in the namespace, serving on UPSTREAM with `args`, logging each query;
    returns once it has started: (process, its log)."""
    log = os.path.join(sandbox.tmp, "dnsmasq.log")
    p = subprocess.Popen(sandbox.in_ns(["dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--listen-address=" + UPSTREAM,
                                        "--bind-interfaces", "--pid-file=" + os.path.join(sandbox.tmp, "dnsmasq.pid"),
                                        "--log-queries", "--log-facility=" + log] + list(args)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sandbox.procs.append(p)
    deadline = time.time() + 10
    while not (os.path.exists(log) and "started" in open(log).read()):
        assert time.time() < deadline and p.poll() is None, "dnsmasq did not start"
        time.sleep(0.05)
    return p, log


def dnsmasq(sandbox, again=False):
    """The node's resolver: api.example.test has an address (TTL 60), other names of
    example.test do not exist, big.example.test has 600 bytes of TXT; it refuses the rest.
    `again`: started anew, on the address it had."""
    if not again:
        sandbox.add_address(UPSTREAM)
    txt = ",".join('"%s"' % (c * 200) for c in "xyz")
    return run_dnsmasq(sandbox, "--local-ttl=60", "--host-record=api.example.test,192.0.2.8", "--local=/example.test/",
                       "--txt-record=big.example.test," + txt)


def node(sandbox, *extra, nameserver=UPSTREAM):
    """The agent with the node's resolv.conf naming dnsmasq (or `nameserver`), the client
    a workload of namespace prod, reviews.prod a service with a backend."""
    upstream = dnsmasq(sandbox)
    resolv = os.path.join(sandbox.tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver %s\nsearch corp.example\noptions timeout:2 attempts:1\n" % nameserver)
    sandbox.add_address(CLIENT)
    sandbox.http_backend("reviews", "10.1.53.11")
    sandbox.write("mesh.yaml", CONFIG)
    sandbox.start_agent("--resolv-conf", resolv, *extra)
    sandbox.wait_log(r"DNS on 127\.0\.0\.1")
    return upstream, resolv


def dig(sandbox, *args):
    r = sandbox.run(["dig", "+time=8", "+tries=1", "@" + ANYWHERE] + list(args), timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    status = re.search(r"status: (\w+)", r.stdout)
    answers = [l.split() for l in r.stdout.splitlines() if l and not l.startswith(";") and len(l.split()) >= 5 and l.split()[2] == "IN"]
    flags = re.search(r";; flags: ([a-z ]+);", r.stdout)
    return {"status": status.group(1) if status else None, "answers": [(a[0], int(a[1]), a[3], a[4]) for a in answers],
            "flags": flags.group(1).split() if flags else [], "text": r.stdout}


def with_resolv(resolv, argv):
    """argv in a mount namespace of its own where /etc/resolv.conf is the node's test one."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv] + argv


def upstream_asked(log, name):
    return len(re.findall(r"query\[\w+\] %s from" % re.escape(name), open(log).read()))


def test_mesh_hosts_and_short_forms_answered_the_rest_forwarded_and_cached(sandbox):
    (_, log), resolv = node(sandbox)
    before = sandbox.counters().get("dns_redirect", 0)
    for name in ("reviews.prod.svc.cluster.local", "reviews", "reviews.prod", "reviews.prod.svc", "REVIEWS.corp.example"):
        r = dig(sandbox, name)
        assert r["status"] == "NOERROR" and "aa" in r["flags"], (name, r["text"])
        assert [(a[2], a[3]) for a in r["answers"]] == [("A", VIP)] and r["answers"][0][1] == 30, (name, r["text"])
    # A mesh name has no AAAA here: NODATA, not NXDOMAIN.
    r = dig(sandbox, "AAAA", "reviews")
    assert r["status"] == "NOERROR" and r["answers"] == [], r["text"]
    # None of that went upstream.
    assert upstream_asked(log, "reviews.prod.svc.cluster.local") == 0 and upstream_asked(log, "reviews") == 0
    # The rest is the upstream's answer, then the cache's, its TTL counted down.
    first = dig(sandbox, "api.example.test")
    assert first["status"] == "NOERROR" and [(a[2], a[3]) for a in first["answers"]] == [("A", "192.0.2.8")], first["text"]
    time.sleep(1.1)
    again = dig(sandbox, "api.example.test")
    assert [(a[2], a[3]) for a in again["answers"]] == [("A", "192.0.2.8")] and again["answers"][0][1] < first["answers"][0][1] <= 60
    assert upstream_asked(log, "api.example.test") == 1
    assert dig(sandbox, "nothere.example.test")["status"] == "NXDOMAIN"
    # Over TCP too, mesh and forwarded names.
    assert [(a[2], a[3]) for a in dig(sandbox, "+tcp", "reviews")["answers"]] == [("A", VIP)]
    assert [(a[2], a[3]) for a in dig(sandbox, "+tcp", "api.example.test")["answers"]] == [("A", "192.0.2.8")]
    assert sandbox.counters()["dns_redirect"] >= before + 10
    # glibc's resolver, as applications use it: getent, Python's getaddrinfo, curl by name.
    r = sandbox.run(with_resolv(resolv, ["getent", "hosts", "reviews.prod.svc.cluster.local"]))
    assert r.returncode == 0 and r.stdout.split()[0] == VIP, r.stdout + r.stderr
    code = "import socket; print(sorted({a[4][0] for n in ('reviews', 'api.example.test') for a in socket.getaddrinfo(n, 80, socket.AF_INET)}))"
    r = sandbox.run(with_resolv(resolv, ["python3", "-c", code]))
    assert r.returncode == 0 and r.stdout.strip() == str(sorted(["192.0.2.8", VIP])), r.stdout + r.stderr
    r = sandbox.run(with_resolv(resolv, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{remote_ip}", "http://reviews/"]))
    assert r.stdout == "200 " + VIP, r.stdout + r.stderr
    assert [r["headers"].get("host") for r in sandbox.requests_seen("reviews")] == ["reviews"]


def test_short_forms_follow_the_asking_workloads_namespace(sandbox):
    """`reviews` is reviews.prod only for workloads of namespace prod: from a process the
    mesh does not know, and from a workload of another namespace, it is forwarded."""
    (_, log), _ = node(sandbox)
    other = os.path.join(sandbox.cgroup, "other")
    os.makedirs(other)
    sandbox.add_address("10.1.53.3")
    seen = len(sandbox.log())
    sandbox.write("other.yaml", """apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: other
  namespace: dev
  annotations: {weft.io/node: node-a, weft.io/cgroup: other}
spec: {address: 10.1.53.3, serviceAccount: other}
""")
    sandbox.wait_log(r"config revision \d+ applied", after=seen)
    r = sandbox.run(["dig", "+time=8", "+tries=1", "@" + ANYWHERE, "reviews"], cgroup=other, timeout=30)
    assert "status: REFUSED" in r.stdout and upstream_asked(log, "reviews") == 1, r.stdout
    r = sandbox.run(["dig", "+time=8", "+tries=1", "@" + ANYWHERE, "reviews.prod"], cgroup=other, timeout=30)
    assert re.search(r"reviews\.prod\.\s+30\s+IN\s+A\s+" + re.escape(VIP), r.stdout), r.stdout


def test_truncation_edns_and_bad_queries(sandbox):
    node(sandbox)
    # 600 bytes of TXT do not fit 512: TC, and the full answer over TCP.
    r = dig(sandbox, "+noedns", "+ignore", "big.example.test", "TXT")
    assert "tc" in r["flags"] and r["answers"] == [], r["text"]
    r = dig(sandbox, "+tcp", "big.example.test", "TXT")
    assert r["status"] == "NOERROR" and len(r["answers"]) == 1 and "x" * 200 in r["text"], r["text"]
    # With EDNS (dig offers 1232 bytes) it fits UDP.
    r = dig(sandbox, "+ignore", "big.example.test", "TXT")
    assert "tc" not in r["flags"] and len(r["answers"]) == 1 and "OPT PSEUDOSECTION" in r["text"], r["text"]
    # EDNS version 1 does not exist.
    assert dig(sandbox, "+edns=1", "+noednsnegotiation", "reviews")["status"] == "BADVERS"
    # Bytes that are not a DNS message: FORMERR with the ID, or nothing at all.
    code = """
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\\x41\\x00\\x00\\x01\\x00\\x01", ("%s", 53))
reply = s.recv(512)
print(hex(struct.unpack(">H", reply[:2])[0]), reply[3] & 15)
s.sendto(b"\\x00\\x01", ("%s", 53))
try:
    s.recv(512)
    print("answered")
except socket.timeout:
    print("silence")
""" % (ANYWHERE, ANYWHERE)
    r = sandbox.run(["python3", "-c", code], timeout=30)
    assert r.stdout.split() == ["0x4242", "1", "silence"], r.stdout + r.stderr
    # The agent still answers.
    assert [(a[2], a[3]) for a in dig(sandbox, "reviews")["answers"]] == [("A", VIP)]


def test_resolver_down_is_servfail_and_no_agent_is_no_redirect(sandbox):
    (upstream, _), _ = node(sandbox, "--keep-datapath")
    upstream.terminate()
    upstream.wait(timeout=10)
    t = time.time()
    r = dig(sandbox, "api.example.test")
    assert r["status"] == "SERVFAIL" and time.time() - t < 6, r["text"]
    assert [(a[2], a[3]) for a in dig(sandbox, "reviews")["answers"]] == [("A", VIP)]
    # An agent that is gone (its datapath kept) takes no query: they go where they were
    # sent. dnsmasq back, asked directly, answers; nothing listens at 192.0.2.53.
    sandbox.stop_agent()
    os.unlink(os.path.join(sandbox.tmp, "dnsmasq.log"))
    dnsmasq(sandbox, again=True)
    r = sandbox.run(["dig", "+time=3", "+tries=1", "@" + UPSTREAM, "api.example.test"], timeout=30)
    assert "192.0.2.8" in r.stdout, r.stdout
    r = sandbox.run(["dig", "+time=2", "+tries=1", "@" + ANYWHERE, "reviews"], timeout=30)
    assert "ANSWER SECTION" not in r.stdout and r.returncode != 0, r.stdout


def test_service_without_addresses_gets_one_that_lasts(sandbox):
    """Istio's DNS auto-allocation: a ServiceEntry with no addresses is given one from
    240.240.0.0/16, answered by the DNS server and balanced by the kernel as any VIP; a
    restarted agent gives it the same one."""
    _, resolv = node(sandbox)
    sandbox.http_backend("payments", "10.1.53.12")
    seen = len(sandbox.log())
    sandbox.write("payments.yaml", """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: prod}
spec:
  hosts: [payments.internal]
  ports: [{number: 80, name: http, protocol: TCP, targetPort: 8080}]
  resolution: STATIC
  endpoints: [{address: 10.1.53.12}]
""")
    sandbox.wait_log(r"config revision \d+ applied", after=seen)
    r = dig(sandbox, "payments.internal")
    assert len(r["answers"]) == 1 and r["answers"][0][3].startswith("240.240."), r["text"]
    vip = r["answers"][0][3]
    assert vip in json.dumps(sandbox.services())  # programmed in the kernel as a frontend
    r = sandbox.run(with_resolv(resolv, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{remote_ip}", "http://payments.internal/"]))
    assert r.stdout == "200 " + vip, r.stdout + r.stderr
    sandbox.stop_agent()
    sandbox.start_agent("--resolv-conf", resolv)
    sandbox.wait_log(r"DNS on 127\.0\.0\.1")
    assert dig(sandbox, "payments.internal")["answers"][0][3] == vip
    assert json.load(open(os.path.join(sandbox.state, "auto-addresses.json")))["assigned"] == {"prod/payments": vip}


def test_a_flooding_workload_cannot_exhaust_the_dns_server(sandbox):
    """An attacker in a workload: 2,000 distinct questions to a resolver that never
    answers, one more question 500 times, and 400 TCP connections held open. The agent
    keeps at most 256 questions upstream and 64 queries waiting for one (the rest get
    SERVFAIL at once) and 256 TCP connections (the rest are closed as they come): its
    descriptors stay bounded, and other workloads' UDP queries for mesh names are answered
    all along."""
    # The node's resolver swallows every question.
    sandbox.add_address("10.1.53.54")
    asked = os.path.join(sandbox.tmp, "asked")
    hole = subprocess.Popen(sandbox.in_ns(["python3", "-c", "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                           "s.bind(('10.1.53.54', 53)); print('ready', flush=True); n = 0\n"
                                           "while True:\n s.recv(4096); n += 1; open(sys.argv[1], 'w').write(str(n))", asked]),
                            stdout=subprocess.PIPE, text=True)
    sandbox.procs.append(hole)
    assert hole.stdout.readline().strip() == "ready"
    node(sandbox, nameserver="10.1.53.54")
    fds_before = len(os.listdir("/proc/%d/fd" % sandbox.agent.pid))
    flood = """
import socket, struct, time, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for every answer
s.settimeout(0.5)
same = b"".join(bytes([len(l)]) + l for l in (b"same", b"example", b"org")) + b"\\0"
for i in range(500):
    s.sendto(struct.pack(">HHHHHH", 5000 + i, 0x0100, 1, 0, 0, 0) + same + b"\\0\\x01\\0\\x01", (RESOLVER, 53))
    if i % 100 == 99:
        time.sleep(0.01)
for i in range(2000):
    name = b"".join(bytes([len(l)]) + l for l in (b"q%d" % i, b"example", b"org")) + b"\\0"
    s.sendto(struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + b"\\0\\x01\\0\\x01", (RESOLVER, 53))
    if i % 100 == 99:
        time.sleep(0.01)
# What is refused is refused at once: counted are the SERVFAILs within 1.5 s, before any
# question upstream could have timed out (2 s).
codes = {}
same_servfail = 0
deadline = time.time() + 1.5
while time.time() < deadline:
    try:
        r = s.recv(512)
    except socket.timeout:
        continue
    if struct.unpack(">H", r[:2])[0] >= 5000:
        same_servfail += (r[3] & 15) == 2
        continue
    codes[r[3] & 15] = codes.get(r[3] & 15, 0) + 1
conns = []
for i in range(400):
    c = socket.create_connection((RESOLVER, 53), timeout=2)
    conns.append(c)
time.sleep(0.5)
closed = 0
for c in conns:
    c.setblocking(False)
    try:
        if c.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"servfail_at_once": codes.get(2, 0), "same_servfail": same_servfail, "tcp_closed": closed}), flush=True)
time.sleep(3)
""".replace("RESOLVER", repr(ANYWHERE))
    attacker = subprocess.Popen(sandbox.in_ns(["python3", "-c", flood], cgroup=sandbox.client_cg), stdout=subprocess.PIPE, text=True)
    sandbox.procs.append(attacker)
    got = json.loads(attacker.stdout.readline())
    # Meanwhile the agent holds what it bounds, and answers mesh names over UDP.
    fds_during = len(os.listdir("/proc/%d/fd" % sandbox.agent.pid))
    answered = dig(sandbox, "reviews")
    attacker.wait(timeout=30)
    # Most were refused at once (some are lost in the socket buffers of a flood: a client
    # retries those), and no more than the bound ever reached the resolver.
    assert got["servfail_at_once"] >= 500, got
    assert int(open(asked).read()) <= 256, open(asked).read()
    # One question asked 500 times while on its way: at most 64 wait for it.
    assert got["same_servfail"] >= 200, got
    assert got["tcp_closed"] >= 400 - 256, got
    assert fds_during - fds_before <= 256 + 256 + 20, (fds_before, fds_during)
    assert [(a[2], a[3]) for a in answered["answers"]] == [("A", VIP)], answered["text"]
    metrics = subprocess.run(sandbox.in_ns(["curl", "-s", "http://127.0.0.1:15090/metrics"]), capture_output=True, text=True).stdout
    assert re.search(r'weft_dns_queries_total\{result="overloaded"\} (\d+)', metrics), metrics[-2000:]
