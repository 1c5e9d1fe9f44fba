"""Kernel L4 fast path, end to end: real programs on a real cgroup, real sockets."""
import json
import os
import signal
import subprocess
import time

from conftest import WEFT, service_yaml, sh

VIP = "10.96.0.10"
B = ["10.250.1.1", "10.250.1.2", "10.250.1.3"]

def lb_rule(load_balancer):
    """A DestinationRule document for service `web` with this loadBalancer (YAML lines)."""
    return """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
spec:
  host: web.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
""" + "".join("      %s\n" % line for line in load_balancer.splitlines())


MAGLEV_DR = lb_rule("consistentHash:\n  useSourceIp: true")


def spread_ok(counts, weights, total, points=5.0):
    wsum = sum(weights.values())
    for name, w in weights.items():
        share = 100.0 * counts.get(name, 0) / total
        want = 100.0 * w / wsum
        assert abs(share - want) <= points, "backend %s got %.1f%%, weight share %.1f%% (counts %s)" % (name, share, want, counts)


def test_tcp_vip_spreads_by_weight_and_shows_the_vip(sandbox):
    for i, a in enumerate(B):
        sandbox.backend("b%d" % (i + 1), a)
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(a, 1) for a in B]))
    sandbox.start_agent()
    n = 3000  # σ of a 1/3 share over 3000 draws is 0.9 points: ±5 points is a real check
    r = sandbox.client("tcp", VIP, 80, n)
    assert r["failures"] == []
    assert sum(r["backends"].values()) == n
    spread_ok(r["backends"], {"b1": 1, "b2": 1, "b3": 1}, n)
    assert r["peers"] == {"%s:80" % VIP: n}, "getpeername() must show the VIP"

    # Re-weight 1:2:3 through the watched config dir.
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1), (B[1], 2), (B[2], 3)]))
    sandbox.wait_services(lambda s: [b["weight"] for b in s[0]["backends"]] == [1, 2, 3])
    r = sandbox.client("tcp", VIP, 80, n)
    assert r["failures"] == []
    spread_ok(r["backends"], {"b1": 1, "b2": 2, "b3": 3}, n)

    # A process in the namespace but outside the cgroup is untouched: the VIP is not
    # routable there, so its connect fails instead of being balanced.
    outside = sandbox.client("tcp", VIP, 80, 3, cgroup=None)
    assert len(outside["failures"]) == 3 and "unreachable" in outside["failures"][0]
    # The backends themselves stay reachable directly from anywhere in the namespace.
    direct = sandbox.client("tcp", B[0], 8080, 3, cgroup=None)
    assert direct["backends"] == {"b1": 3}


def test_ipv6_vip(sandbox):
    v6 = ["fd00:250::1", "fd00:250::2"]
    sandbox.backend("b1", v6[0])
    sandbox.backend("b2", v6[1])
    sandbox.write("v6.yaml", service_yaml("web6", ["fd00:96::10"], [(a, 1) for a in v6]))
    sandbox.start_agent()
    r = sandbox.client("tcp", "fd00:96::10", 80, 1000)
    assert r["failures"] == []
    spread_ok(r["backends"], {"b1": 1, "b2": 1}, 1000)
    assert r["peers"] == {"fd00:96::10:80": 1000}


def test_udp_vip_replies_come_from_the_vip(sandbox):
    sandbox.backend("u1", B[0], port=5353, mode="udp")
    sandbox.backend("u2", B[1], port=5353, mode="udp")
    sandbox.write("dns.yaml", service_yaml("dns", [VIP], [(B[0], 1), (B[1], 1)], port=53, target=5353, proto="UDP"))
    sandbox.start_agent()
    for mode in ([], ["--connected"]):
        r = sandbox.client("udp", VIP, 53, 400, *mode)
        assert r["failures"] == [], mode
        assert r["peers"] == {"%s:53" % VIP: 400}, "replies must appear to come from the VIP (%s)" % mode
        # One socket per datagram here, so sockets spread over both backends.
        assert set(r["backends"]) == {"u1", "u2"}, r
    # TCP to the same VIP:port is not the UDP service.
    tcp = sandbox.client("tcp", VIP, 53, 1)
    assert tcp["failures"]


def test_use_source_ip_is_sticky_and_survives_removal_of_another_backend(sandbox):
    backends = ["10.250.2.%d" % i for i in range(1, 6)]
    for i, a in enumerate(backends):
        sandbox.backend("m%d" % i, a)
    dr = MAGLEV_DR
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(a, 1) for a in backends]) + dr)
    sources = ["10.250.9.%d" % i for i in range(1, 9)]
    for s in sources:
        sandbox.add_address(s)
    sandbox.start_agent()
    assert sandbox.services()[0]["algorithm"] == "maglev"
    chosen = {}
    for s in sources:
        r = sandbox.client("tcp", VIP, 80, 100, "--bind", s)
        assert r["failures"] == []
        assert len(r["backends"]) == 1, "client %s moved between backends: %s" % (s, r["backends"])
        chosen[s] = next(iter(r["backends"]))
    assert len(set(chosen.values())) > 1, "8 clients all hashed to one backend: %s" % chosen

    # Remove a backend that client sources[0] does not use: it must not move.
    mine = chosen[sources[0]]
    victim = next(i for i in range(5) if "m%d" % i != mine)
    keep = [a for i, a in enumerate(backends) if i != victim]
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(a, 1) for a in keep]) + dr)
    sandbox.wait_services(lambda s: len([b for b in s[0]["backends"] if b["state"] == "active"]) == 4)
    r = sandbox.client("tcp", VIP, 80, 100, "--bind", sources[0])
    assert r["backends"] == {mine: 100}
    out = sandbox.weft("maglev", "get", "%s:80" % VIP, "-j", "--bpffs", sandbox.bpffs)
    table = json.loads(out.stdout)
    assert table["tableSize"] == 16381 and len(table["backends"]) == 4


def test_removed_backend_drains_and_established_connections_survive(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.backend("b2", B[1])
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1), (B[1], 1)]))
    sandbox.start_agent()
    outfile = os.path.join(sandbox.tmp, "held.txt")
    held = subprocess.Popen(sandbox.in_ns(["python3", os.path.join(os.path.dirname(__file__), "client.py"),
                                           "hold", VIP, "80", "b2", outfile], cgroup=sandbox.client_cg),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sandbox.procs.append(held)
    assert json.loads(held.stdout.readline()) == {"held": "b2"}

    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1)]))
    states = sandbox.wait_services(lambda s: {b["address"] for b in s[0]["backends"]} == {"%s:8080" % B[0]})
    assert states[0]["backends"][0]["state"] == "active"
    dump = sandbox.weft("map", "dump", "weft_backend_v1", "--bpffs", sandbox.bpffs).stdout
    assert "%s:8080 weight 1 draining" % B[1] in dump

    r = sandbox.client("tcp", VIP, 80, 300)
    assert r["failures"] == [] and r["backends"] == {"b1": 300}, "no new connection may reach a removed backend"

    held.stdin.write("still there?\n")
    held.stdin.flush()
    deadline = time.time() + 5
    while time.time() < deadline and not open(outfile).read():
        time.sleep(0.05)
    assert open(outfile).read() == "b2\n", "the established connection to the removed backend must keep working"
    held.stdin.close()
    held.wait(timeout=5)

    # After the drain period (2 s in tests) the backend entry is gone.
    deadline = time.time() + 10
    while time.time() < deadline and B[1] in sandbox.weft("map", "dump", "weft_backend_v1", "--bpffs", sandbox.bpffs).stdout:
        time.sleep(0.2)
    assert B[1] not in sandbox.weft("map", "dump", "weft_backend_v1", "--bpffs", sandbox.bpffs).stdout


def test_restart_with_keep_datapath_has_zero_failures(sandbox):
    for i, a in enumerate(B):
        sandbox.backend("b%d" % (i + 1), a)
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(a, 1) for a in B]))
    sandbox.start_agent("--keep-datapath")
    progs_before = {p["progID"] for p in json.loads(sandbox.weft("prog", "show", "-j", "--bpffs", sandbox.bpffs).stdout)}
    stop = os.path.join(sandbox.tmp, "stop")
    loop = subprocess.Popen(sandbox.in_ns(["python3", os.path.join(os.path.dirname(__file__), "client.py"), "loop", VIP, "80", stop],
                                          cgroup=sandbox.client_cg), stdout=subprocess.PIPE, text=True)
    sandbox.procs.append(loop)
    time.sleep(0.5)
    for _ in range(2):
        assert sandbox.stop_agent(signal.SIGTERM) == 0
        assert os.path.exists(os.path.join(sandbox.bpffs, "links", "weft_connect4")), "--keep-datapath must leave the links pinned"
        time.sleep(0.5)  # traffic keeps flowing with no agent at all
        sandbox.start_agent("--keep-datapath")
        assert "datapath adopted" in sandbox.log()
        time.sleep(0.5)
    open(stop, "w").close()
    r = json.loads(loop.communicate(timeout=30)[0])
    assert r["failures"] == [], r["failures"][:5]
    assert sum(r["backends"].values()) > 100 and len(r["backends"]) == 3
    # The new agent swapped new programs into the same links.
    progs_after = {p["progID"] for p in json.loads(sandbox.weft("prog", "show", "-j", "--bpffs", sandbox.bpffs).stdout)}
    assert progs_after and progs_after.isdisjoint(progs_before)

    # An agent without --keep-datapath adopts too, and its stop detaches and unpins everything.
    assert sandbox.stop_agent(signal.SIGTERM) == 0
    sandbox.start_agent()
    assert "datapath adopted" in sandbox.log()
    progs_after = {p["progID"] for p in json.loads(sandbox.weft("prog", "show", "-j", "--bpffs", sandbox.bpffs).stdout)}
    assert sandbox.stop_agent(signal.SIGINT) == 0
    assert not os.path.exists(sandbox.bpffs)
    assert sh(["bpftool", "cgroup", "show", sandbox.cgroup]).stdout.strip() == ""
    live = sh("bpftool prog show -j").stdout
    ids = {p["id"] for p in json.loads(live)}
    assert ids.isdisjoint(progs_after), "programs must be unloaded"


def test_bad_config_changes_nothing_and_is_reported_with_position(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1)]))
    sandbox.start_agent()
    before = {m: sandbox.weft("map", "dump", m, "-j", "--bpffs", sandbox.bpffs).stdout for m in ("weft_svc_v1", "weft_backend_v1", "weft_slot_v1")}
    cases = {
        "port.yaml": (service_yaml("other", ["10.96.0.11"], [(B[0], 1)], target=70000), r"port\.yaml:12:17: error \[VAL001\] .*targetPort must be in 1\.\.65535"),
        "syntax.yaml": ("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x\n", r"syntax\.yaml:\d+:\d+: error \[YAML001\]"),
        "vip.yaml": (service_yaml("other", ["10.96.0.999"], [(B[0], 1)]), r"vip\.yaml:7:15: error \[SE002\]"),
        "dup.yaml": (service_yaml("other", [VIP], [(B[0], 1)]), r"(dup|web)\.yaml:1:1: error \[SE008\] .*10\.96\.0\.10:80/tcp is already the address of ServiceEntry default/(web|other) \(.*(web|dup)\.yaml:1:1\)"),
        "field.yaml": (service_yaml("other", ["10.96.0.12"], [(B[0], 1)]).replace("  resolution: STATIC", "  resolution: STATIC\n  colour: blue"), r"field\.yaml:\d+:3: error \[FLD001\] .*spec\.colour is not a field"),
        "type.yaml": (service_yaml("other", ["10.96.0.13"], [(B[0], 1)]).replace("number: 80", "number: http"), r"type\.yaml:\d+:\d+: error \[TYP001\] .*must be an integer"),
    }
    for name, (text, pattern) in cases.items():
        mark = len(sandbox.log())
        sandbox.write(name, text)
        sandbox.wait_log(pattern, after=mark)
        sandbox.wait_log(r"config rejected: still serving revision 1", after=mark)
        after = {m: sandbox.weft("map", "dump", m, "-j", "--bpffs", sandbox.bpffs).stdout for m in before}
        assert after == before, "a rejected config must not touch the maps (%s)" % name
        assert sandbox.client("tcp", VIP, 80, 20)["backends"] == {"b1": 20}
        os.remove(os.path.join(sandbox.config, name))
    # Fixing the config applies it.
    sandbox.write("more.yaml", service_yaml("other", ["10.96.0.11"], [(B[0], 1)]))
    sandbox.wait_services(lambda s: len(s) == 2)


def test_inspect_commands(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 2)]))
    missing = sandbox.weft("service", "list", "--bpffs", sandbox.bpffs, check=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "agent is probably not running" in missing.stderr
    sandbox.start_agent()
    table = sandbox.weft("service", "list", "--bpffs", sandbox.bpffs).stdout
    assert "10.96.0.10:80/tcp" in table and "10.250.1.1:8080" in table and "active" in table
    progs = json.loads(sandbox.weft("prog", "show", "-j", "--bpffs", sandbox.bpffs).stdout)
    assert {p["attachType"] for p in progs} >= {"cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_udp4_sendmsg",
                                                 "cgroup_udp4_recvmsg", "cgroup_inet4_getpeername"}
    # bpftool, an independent witness, sees the same programs on the test's cgroup.
    witness = sh(["bpftool", "cgroup", "show", sandbox.cgroup]).stdout
    for p in progs:
        assert p["name"] in witness
    maps = json.loads(sandbox.weft("map", "show", "-j", "--bpffs", sandbox.bpffs).stdout)
    assert [m["name"] for m in maps][:2] == ["weft_svc_v1", "weft_backend_v1"]
    sandbox.client("tcp", VIP, 80, 5)
    stats = dict((e["key"], e["value"]) for e in json.loads(sandbox.weft("map", "dump", "weft_stats_v1", "-j", "--bpffs", sandbox.bpffs).stdout))
    assert int(stats["connect_xlate"]) == 5 and int(stats["peername_revnat"]) == 5
    status = json.loads(sandbox.weft("status", "--admin-socket", sandbox.sock).stdout)
    assert status["revision"] == 1 and status["services"] == 1
    assert oct(os.stat(sandbox.sock).st_mode & 0o777) == "0o600"


def test_missing_kernel_feature_is_one_clear_line(sandbox):
    r = subprocess.run([WEFT, "agent", "--config-dir", sandbox.config, "--cgroup", sandbox.tmp, "--bpffs", sandbox.bpffs,
                        "--admin-socket", sandbox.sock, "--state-dir", sandbox.state], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    err = [l for l in r.stderr.splitlines() if "error" in l.lower() or "weft:" in l]
    assert any("is not on cgroup v2" in l for l in err), r.stderr
    assert not os.path.exists(os.path.join(sandbox.bpffs, "links", "weft_connect4"))


def test_round_robin_is_exact(sandbox):
    for i, a in enumerate(B):
        sandbox.backend("b%d" % (i + 1), a)
    dr = lb_rule("simple: ROUND_ROBIN")
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1), (B[1], 1), (B[2], 2)]) + dr)
    sandbox.start_agent()
    assert sandbox.services()[0]["algorithm"] == "round_robin"
    r = sandbox.client("tcp", VIP, 80, 400)
    # Weighted round robin walks the table in order: every 4 connections are 1+1+2.
    assert r["failures"] == [] and r["backends"] == {"b1": 100, "b2": 100, "b3": 200}, r


def test_use_source_ip_for_unbound_clients_hashes_their_workload_address(sandbox):
    """Clients that do not bind() have no source address at connect() time; weft hashes
    the address of the WorkloadEntry whose weft.io/cgroup holds the client."""
    backends = ["10.250.2.%d" % i for i in range(1, 6)]
    for i, a in enumerate(backends):
        sandbox.backend("m%d" % i, a)
    # Two cgroups per address: both must hash alike, which hashing anything else about the
    # cgroup (its id, say) would not do.
    workloads = {"frontend-%d" % i: "10.250.3.%d" % ((i + 1) // 2) for i in range(1, 7)}
    docs = [service_yaml("web", [VIP], [(a, 1) for a in backends]) + MAGLEV_DR]
    for name, addr in workloads.items():
        os.makedirs(os.path.join(sandbox.cgroup, "apps", name))
        docs.append("""---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: %s
  annotations: {weft.io/node: node-a, weft.io/cgroup: apps/%s}
spec: {address: %s, labels: {app: frontend}}
""" % (name, name, addr))
    sandbox.write("web.yaml", "\n".join(docs))
    sandbox.start_agent(node="node-a")
    wl = sandbox.weft("map", "dump", "weft_wl_v1", "--bpffs", sandbox.bpffs).stdout
    for addr in workloads.values():
        assert addr in wl, wl
    chosen = {}
    for name in workloads:
        r = sandbox.client("tcp", VIP, 80, 50, cgroup=os.path.join(sandbox.cgroup, "apps", name))
        assert r["failures"] == [] and len(r["backends"]) == 1, (name, r)
        chosen[name] = next(iter(r["backends"]))
    for i in (1, 3, 5):
        assert chosen["frontend-%d" % i] == chosen["frontend-%d" % (i + 1)], "same address, different backend: %s" % chosen
    assert len(set(chosen.values())) > 1, "3 workload addresses all hashed alike: %s" % chosen


def test_restart_with_a_broken_config_keeps_the_adopted_datapath(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1)]))
    sandbox.start_agent("--keep-datapath")
    assert sandbox.stop_agent(signal.SIGTERM) == 0
    sandbox.write("web.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web}\nspec: {hosts: [")
    sandbox.start_agent()
    assert "datapath adopted" in sandbox.log() and "config rejected" in sandbox.log()
    time.sleep(1.5)  # several resync intervals
    assert sandbox.client("tcp", VIP, 80, 20)["backends"] == {"b1": 20}, "the last good datapath must keep serving"
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1), (B[1], 1)]))
    sandbox.wait_services(lambda s: len(s[0]["backends"]) == 2)


def test_failed_start_leaves_nothing_attached(sandbox):
    r = subprocess.run([WEFT, "agent", "--config-dir", sandbox.config, "--cgroup", sandbox.cgroup, "--bpffs", sandbox.bpffs,
                        "--admin-socket", "/proc/weft-test.sock", "--state-dir", sandbox.state], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot listen on admin socket /proc/weft-test.sock (--admin-socket)" in r.stderr
    assert sh(["bpftool", "cgroup", "show", sandbox.cgroup]).stdout.strip() == ""
    assert not os.path.exists(os.path.join(sandbox.bpffs, "links"))
    r = subprocess.run([WEFT, "agent", "--config-dir", "/nonexistent-weft", "--cgroup", sandbox.cgroup, "--bpffs", sandbox.bpffs,
                        "--admin-socket", sandbox.sock, "--state-dir", sandbox.state], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "config dir /nonexistent-weft does not exist (--config-dir)" in r.stderr


DUAL_STACK = r"""
import json, socket, sys
out = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)   # dual-stack, as gRPC and Java dial
    s.settimeout(5)
    s.connect(("::ffff:" + sys.argv[1], 80))
    peer = s.getpeername()[0]
    s.sendall(b"hello\n")
    out.append([s.recv(100).decode().strip(), peer])
    s.close()
print(json.dumps(out))
"""


def test_ipv4_vip_dialed_from_a_dual_stack_socket(sandbox):
    """::ffff:VIP is the IPv4 VIP: balanced the same, and getpeername() shows ::ffff:VIP."""
    for i, a in enumerate(B[:2]):
        sandbox.backend("b%d" % i, a)
    sandbox.write("web.yaml", service_yaml("web", [VIP], [(B[0], 1), (B[1], 1)]))
    sandbox.start_agent()
    r = sandbox.run(["python3", "-c", DUAL_STACK, VIP, "40"], check=True)
    got = json.loads(r.stdout)
    assert {name for name, _ in got} == {"b0", "b1"}
    assert {peer for _, peer in got} == {"::ffff:" + VIP}
