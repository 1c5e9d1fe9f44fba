"""The soak (scripts/soak MINUTES; a 2-minute run in scripts/test): the two-node mTLS
mesh under fixed-rate HTTP/1.1, HTTP/2, gRPC and TCP traffic, one hop (a workload of
node a, through node a's agent) and through the mTLS tunnel (node b's), while the config
changes every 5 s, workload certificates renew every ~20 s and each node's agent is taken
over once a minute. It counts every failed request, and samples each agent's RSS and
open descriptors and the kernel maps' entries over time (printed as a table)."""
import json
import os
import subprocess
import time

from conftest import HERE
from test_mtls import node_service

MINUTES = float(os.environ.get("WEFT_SOAK_MINUTES", "2"))
RATE = float(os.environ.get("WEFT_SOAK_RATE", "20"))  # per kind and path, per second
SAMPLE = 10  # seconds between samples
CERT_TTL = os.environ.get("WEFT_SOAK_CERT_TTL", "40")  # renewed at half life: every ~20 s

# name, node, workload address, port protocol, backend kind
WORKLOADS = [
    ("web-a", "a", "10.250.1.21", "HTTP", "http"), ("h2-a", "a", "10.250.1.22", "HTTP2", "h2"),
    ("grpc-a", "a", "10.250.1.23", "GRPC", "grpc"), ("tcp-a", "a", "10.250.1.24", "TCP", "tcp"),
    ("web-b", "b", "10.250.2.21", "HTTP", "http"), ("h2-b", "b", "10.250.2.22", "HTTP2", "h2"),
    ("grpc-b", "b", "10.250.2.23", "GRPC", "grpc"), ("tcp-b", "b", "10.250.2.24", "TCP", "tcp"),
]
LOAD_KIND = {"http": "http1", "h2": "http2", "grpc": "grpc", "tcp": "tcp"}


def vip(i):
    return "10.96.9.%d" % (i + 1)


def config():
    docs = ["""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: default
  annotations: {weft.io/node: node-a, weft.io/cgroup: frontend}
spec: {address: 10.250.1.10, labels: {app: frontend}, serviceAccount: frontend}"""]
    for i, (name, node, addr, proto, _) in enumerate(WORKLOADS):
        docs.append(node_service(name, vip(i), addr, proto, node="node-" + node, workload=name, account=name).strip().lstrip("-\n"))
        docs.append("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %(n)s, namespace: default}
spec:
  hosts: [%(n)s.default.svc.cluster.local]
  %(r)s:
  - route:
    - destination: {host: %(n)s.default.svc.cluster.local}""" % {"n": name, "r": "tcp" if proto == "TCP" else "http"})
    return "\n---\n".join(docs) + "\n"


def churn(k):
    """Config push k: a varying number of services nobody calls (0 to 16), each a VIP,
    a backend and a VirtualService the agents program and unprogram."""
    n = (k % 5) * 4
    return "\n---\n".join("""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: churn-%(i)d, namespace: default}
spec:
  hosts: [churn-%(i)d.default.svc.cluster.local]
  addresses: [10.96.10.%(j)d]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.250.9.%(j)d}]""" % {"i": i, "j": i + 1} for i in range(n)) + "\n"


def agent_stats(node):
    pid = node.agent.pid
    rss = next(int(l.split()[1]) for l in open("/proc/%d/status" % pid) if l.startswith("VmRSS:")) / 1024
    return rss, len(os.listdir("/proc/%d/fd" % pid))


# Maps whose entries follow the config or the connections in flight: back to where they
# were once the churn is taken back and the load stops. weft_revnat_v1 (which VIP each
# socket dialed) is an LRU map: entries of closed sockets stay until newer ones push
# them out, so it fills towards its capacity (262,144) by design and is shown apart.
COUNTED = ("weft_svc_v1", "weft_backend_v1", "weft_pending_v1", "weft_capture_v1")


def map_entries(node):
    shown = json.loads(node.weft("map", "show", "-j", "--bpffs", node.bpffs).stdout)
    return {m["name"]: m["entries"] for m in shown if m["name"] in COUNTED + ("weft_revnat_v1",)}


def serials(node):
    certs = json.loads(node.weft("cert", "show", "-j", "--admin-socket", node.sock).stdout)
    return {c["serial"] for c in certs}


def test_soak(mesh):
    a, b = mesh.a, mesh.b
    nodes = {"a": a, "b": b}
    for node, cg in ((a, "frontend"),) + tuple((nodes[w[1]], w[0]) for w in WORKLOADS):
        os.makedirs(os.path.join(node.cgroup, cg), exist_ok=True)
    a.add_address("10.250.1.10")
    for name, node, addr, _, kind in WORKLOADS:
        n = nodes[node]
        if kind == "http":
            n.http_backend(name, addr, 8080)
        elif kind == "h2":
            n.h2_backend(name, addr, 8080)
        elif kind == "grpc":
            n.grpc_backend(name, addr, 8080)
        else:
            n.backend(name, addr, 8080)
    mesh.write("mesh.yaml", config())
    mesh.write("churn.yaml", churn(0))
    agents = {"a": 0, "b": 0}

    def start(node):
        n = nodes[node]
        extra = ["--takeover"] if agents[node] else []
        agents[node] += 1
        n.start_agent("--ca", os.path.join(n.tmp, "node-ca"), "--cert-ttl", CERT_TTL,
                      "--access-log", os.path.join(n.tmp, "access-%d.log" % agents[node]), *extra, node="node-" + node)

    start("a")
    start("b")
    baseline = {k: map_entries(nodes[k]) for k in nodes}
    seconds = MINUTES * 60
    frontend = os.path.join(a.cgroup, "frontend")
    loads = []
    for i, (name, node, _, _, kind) in enumerate(WORKLOADS):
        p = subprocess.Popen(a.in_ns(["/usr/bin/python3", os.path.join(HERE, "soakload.py"), LOAD_KIND[kind], "%s:80" % vip(i),
                                      str(RATE), str(seconds)], cgroup=frontend),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        a.procs.append(p)
        loads.append((name, p))

    samples, handovers, pushes = [], [], 0
    renewals = {k: 0 for k in nodes}
    last_serials = {k: serials(nodes[k]) for k in nodes}
    begin = time.time()
    next_sample = next_push = begin
    next_handover = {"a": 20, "b": 50}
    while time.time() - begin < seconds:
        t = time.time() - begin
        # A handover of each node every minute: node a's at :20, node b's at :50.
        for node in nodes:
            if t >= next_handover[node]:
                next_handover[node] += 60
                old, old_log = nodes[node].agent, nodes[node].agent_log
                start(node)
                handovers.append((node, t))
                try:
                    rc = old.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    rc = "still running"
                assert rc == 0, "node %s's old agent: %s\n%s" % (node, rc, open(old_log).read()[-3000:])
        if time.time() >= next_push:
            pushes += 1
            mesh.write("churn.yaml", churn(pushes))
            next_push += 5
        if time.time() >= next_sample:
            row = {"t": round(t)}
            for k, n in nodes.items():
                row["rss_" + k], row["fds_" + k] = agent_stats(n)
                entries = map_entries(n)
                row["maps_" + k] = sum(entries[m] for m in COUNTED)
                row["revnat_" + k] = entries["weft_revnat_v1"]
                now = serials(n)
                renewals[k] += len(now - last_serials[k])
                last_serials[k] = now
            samples.append(row)
            next_sample += SAMPLE
        time.sleep(0.2)

    results = {}
    for name, p in loads:
        out = p.communicate(timeout=120)[0].strip().splitlines()
        results[name] = json.loads(out[-1])
    # The churn is taken back: the maps hold what they held before it.
    mesh.write("churn.yaml", churn(0))
    time.sleep(3)
    after = {k: {m: v for m, v in map_entries(nodes[k]).items() if m in COUNTED} for k in nodes}
    baseline = {k: {m: v for m, v in baseline[k].items() if m in COUNTED} for k in nodes}

    print("\nsoak: %.0f min, %g requests/s per kind and path, %d config pushes, handovers %s, certificate renewals %s"
          % (MINUTES, RATE, pushes, [(h[0], round(h[1])) for h in handovers], renewals))
    print("%6s  %9s %6s %6s %8s  %9s %6s %6s %8s" % ("t (s)", "RSS a MB", "fds a", "maps a", "revnat a", "RSS b MB", "fds b", "maps b", "revnat b"))
    for r in samples:
        print("%6d  %9.1f %6d %6d %8d  %9.1f %6d %6d %8d" % (r["t"], r["rss_a"], r["fds_a"], r["maps_a"], r["revnat_a"], r["rss_b"], r["fds_b"],
                                                              r["maps_b"], r["revnat_b"]))
    print("%-8s %8s %7s  %s" % ("traffic", "ok", "failed", "first errors"))
    for name, r in results.items():
        print("%-8s %8d %7d  %s" % (name, r["ok"], r["failed"], "; ".join(r["errors"][:2])))
    print("map entries before / after the churn was taken back:", baseline, after)

    failed = {name: r for name, r in results.items() if r["failed"]}
    if failed:  # what the agents logged of the requests that failed
        for k, n in nodes.items():
            for i in range(1, agents[k] + 1):
                path = os.path.join(n.tmp, "access-%d.log" % i)
                bad = [l for l in open(path) if '"response_code":200' not in l] if os.path.exists(path) else []
                print("node %s, agent %d: %d request(s) not answered 200" % (k, i, len(bad)), "".join(bad[:5]))
        # The agents' log lines of the seconds around each failure.
        stamps = set()
        for k, n in nodes.items():
            for f in os.listdir(n.tmp):
                if f.startswith("access-"):
                    for l in open(os.path.join(n.tmp, f)):
                        if '"response_code":200' not in l:
                            t = json.loads(l)["start_time"][:19]
                            stamps |= {t[:17] + "%02d" % (int(t[17:19]) + d) for d in (-1, 0, 1)}
        for k, n in nodes.items():
            for log in sorted(f for f in os.listdir(n.tmp) if f.startswith("agent-")):
                near = [l for l in open(os.path.join(n.tmp, log)) if l[:19] in stamps and "WE006" not in l]
                print("node %s, %s:" % (k, log), "".join(near)[-4000:])
    assert not failed, failed
    # The traffic ran all along (a slow machine may fall behind the rate: not a failure).
    assert all(r["ok"] >= RATE * seconds * 0.5 for r in results.values()), {n: r["ok"] for n, r in results.items()}
    assert len(handovers) >= 2 * int(MINUTES) and all(renewals.values()), (handovers, renewals)
    assert after == baseline, (baseline, after)
    # Bounded: the last minute's descriptors and RSS are not above the first minute's
    # highest by more than a margin (a leak per request or per handover would be).
    first = [r for r in samples if r["t"] < 60] or samples[:1]
    last = [r for r in samples if r["t"] >= samples[-1]["t"] - 60]
    for k in nodes:
        assert max(r["fds_" + k] for r in last) <= max(r["fds_" + k] for r in first) + 32, samples
        assert max(r["rss_" + k] for r in last) <= max(r["rss_" + k] for r in first) + 48, samples
