"""L7 data path: the kernel captures connections to services that need a proxy, the agent
routes them. Real clients (curl, Python http.client) dial the VIP from a client cgroup;
real HTTP backends record what reached them."""
import json
import os
import socket
import subprocess
import time

from conftest import HERE, Prometheus, http_service_yaml, routed_service_yaml, service_yaml

VIP = "10.96.7.10"

ROUTES = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
spec:
  host: web
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts: [web]
  http:
%s
"""


def web(sandbox, http_routes):
    sandbox.http_backend("v1", "10.1.7.11")
    sandbox.http_backend("v2", "10.1.7.12")
    sandbox.write("web.yaml", http_service_yaml("web", VIP, [("10.1.7.11", {"version": "v1"}), ("10.1.7.12", {"version": "v2"})])
                  + ROUTES % http_routes)
    sandbox.start_agent("--access-log", os.path.join(sandbox.tmp, "access.log"))


def test_capture_keeps_vip_and_routes_through_agent(sandbox):
    web(sandbox, """  - route:
    - destination: {host: web, subset: v1}""")
    r = sandbox.run(["curl", "-s", "-D", "-", "-w", "\\npeer=%{remote_ip}:%{remote_port}", "http://%s/hello" % VIP], check=True)
    assert "x-backend: v1" in r.stdout.lower()
    assert r.stdout.strip().endswith("peer=%s:80" % VIP)      # the client still sees the VIP
    seen = sandbox.requests_seen("v1")
    assert len(seen) == 1 and seen[0]["path"] == "/hello"
    assert seen[0]["headers"].get("x-request-id")              # it went through the proxy
    c = sandbox.counters()
    assert c["connect_capture"] == 1 and c["capture_rekeyed"] == 1 and c["connect_xlate"] == 0
    line = sandbox.access_log()[-1]
    assert line["response_code"] == 200 and line["upstream_cluster"] == "outbound|80|v1|web.default.svc.cluster.local"


def test_weighted_split_and_header_canary(sandbox):
    web(sandbox, """  - match:
    - headers:
        user-type: {exact: beta}
    route:
    - destination: {host: web, subset: v2}
  - route:
    - destination: {host: web, subset: v1}
      weight: 90
    - destination: {host: web, subset: v2}
      weight: 10""")
    out = sandbox.http("http://%s/split" % VIP, 1500)
    assert not out["failures"] and out["statuses"] == {"200": 1500}
    share = out["backends"]["v2"] / 1500.0
    assert abs(share - 0.10) <= 0.03, out["backends"]
    beta = sandbox.http("http://%s/canary" % VIP, 200, "-H", "user-type: beta")
    assert beta["backends"] == {"v2": 200}


def test_retries_only_when_safe(sandbox):
    web(sandbox, """  - route:
    - destination: {host: web, subset: v1}
    retries:
      attempts: 2
      retryOn: 5xx,reset""")
    # A backend that fails each request's first attempt: the client sees only 200s.
    out = sandbox.http("http://%s/r?fail_first=1&key=k{i}" % VIP, 20)
    assert out["statuses"] == {"200": 20}, out
    assert len(sandbox.requests_seen("v1")) == 40
    # A POST that reached the backend and was cut off is not sent again…
    post = sandbox.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data", "pay=1",
                        "http://%s/p?drop_first=1&key=post" % VIP])
    assert post.stdout == "503"
    assert [r["method"] for r in sandbox.requests_seen("v1")[40:]] == ["POST"]
    # …while the same failure on an idempotent GET is retried into a 200.
    get = sandbox.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://%s/g?drop_first=1&key=get" % VIP])
    assert get.stdout == "200"
    assert [r["method"] for r in sandbox.requests_seen("v1")[41:]] == ["GET", "GET"]
    flags = [l["response_flags"] for l in sandbox.access_log(22) if l["method"] == "POST"]
    assert flags == ["UF"]


def test_timeout_and_per_try_timeout(sandbox):
    web(sandbox, """  - match:
    - uri: {prefix: /slow}
    route:
    - destination: {host: web, subset: v1}
    timeout: 500ms
  - route:
    - destination: {host: web, subset: v2}
    retries:
      attempts: 1
      perTryTimeout: 300ms
      retryOn: 5xx""")
    start = time.time()
    r = sandbox.run(["curl", "-s", "-w", "\\n%{http_code}", "http://%s/slow?delay=3000" % VIP])
    took = time.time() - start
    assert r.stdout.endswith("504") and "upstream request timeout" in r.stdout
    assert 0.45 <= took <= 0.55 + 0.15, took   # 500 ms ± 10%, plus curl's own start-up
    line = sandbox.access_log()[-1]
    assert line["response_flags"] == "UT" and 450 <= line["duration"] <= 550
    sandbox.run(["curl", "-s", "http://%s/try?delay=3000" % VIP])
    seen = sandbox.requests_seen("v2")
    assert len(seen) == 2
    gap = seen[1]["time"] - seen[0]["time"]    # first try cut at perTryTimeout, then retried
    assert 0.27 <= gap <= 0.33 + 0.03, gap      # ± 10%, plus at most Envoy's 25 ms back-off
    line = sandbox.access_log(2)[-1]
    assert line["response_code"] == 504 and "UT" in line["response_flags"].split(",")


def test_direct_response_redirect_rewrite_and_headers(sandbox):
    web(sandbox, """  - match:
    - uri: {exact: /health}
    directResponse:
      status: 200
      body: {string: "ok from weft"}
  - match:
    - uri: {prefix: /old}
    redirect:
      uri: /new
      redirectCode: 301
  - match:
    - uri: {prefix: /api/}
    rewrite:
      uri: /v2/
    headers:
      request:
        set: {x-team: blue}
        remove: [x-secret]
      response:
        add: {x-served-by: weft}
    route:
    - destination: {host: web, subset: v1}
  - route:
    - destination: {host: web, subset: v2}""")
    r = sandbox.run(["curl", "-s", "-w", "|%{http_code}", "http://%s/health" % VIP])
    assert r.stdout == "ok from weft|200"
    r = sandbox.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "http://%s/old" % VIP])
    assert r.stdout == "301 http://%s/new" % VIP
    r = sandbox.run(["curl", "-s", "-D", "-", "-H", "x-secret: s3cr3t", "http://%s/api/items?id=7" % VIP])
    assert "x-served-by: weft" in r.stdout.lower()
    seen = sandbox.requests_seen("v1")[-1]
    assert seen["path"] == "/v2/items?id=7"
    assert seen["headers"]["x-team"] == "blue" and "x-secret" not in seen["headers"]
    assert sandbox.requests_seen("v2") == []       # nothing fell through


def test_source_workload_from_cgroup(sandbox):
    """sourceLabels match the client's WorkloadEntry, which the kernel identified by
    the cgroup of the process that connected — not by anything the client sent."""
    os.makedirs(os.path.join(sandbox.cgroup, "frontend"))
    frontend = """---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  annotations: {weft.io/node: node-a, weft.io/cgroup: frontend}
spec:
  address: 10.1.7.50
  labels: {app: frontend}
"""
    sandbox.write("frontend.yaml", frontend)
    web(sandbox, """  - match:
    - sourceLabels: {app: frontend}
    route:
    - destination: {host: web, subset: v2}
  - route:
    - destination: {host: web, subset: v1}""")
    sandbox.add_address("10.1.7.50")
    fe = sandbox.http("http://%s/" % VIP, 20, cgroup=os.path.join(sandbox.cgroup, "frontend"))
    other = sandbox.http("http://%s/" % VIP, 20)
    assert fe["backends"] == {"v2": 20} and other["backends"] == {"v1": 20}
    assert sandbox.access_log(40)[0]["source_workload"] == "default/frontend"


def test_agent_in_attached_cgroup_is_never_captured(sandbox):
    """The agent runs inside the cgroup its programs hook; its upstream connection to
    another VIP is load-balanced by the kernel but not captured back into itself."""
    sandbox.http_backend("db", "10.1.7.21")
    sandbox.write("chain.yaml", service_yaml("db", ["10.96.7.20"], [("10.1.7.21", 1)], proto="HTTP") + "\n---\n"
                  + http_service_yaml("front", "10.96.7.30", [("10.96.7.20", {})], target=80) + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: front
spec:
  hosts: [front]
  http:
  - route:
    - destination: {host: front}
""")
    agent_cg = os.path.join(sandbox.cgroup, "agent")
    os.makedirs(agent_cg)
    sandbox.start_agent(cgroup=agent_cg)
    out = sandbox.http("http://10.96.7.30/x", 10)
    assert out["statuses"] == {"200": 10}, out
    assert len(sandbox.requests_seen("db")) == 10
    c = sandbox.counters()
    # 10 client connects captured once each (keep-alive: one connection), agent's own
    # connect translated by L4 and counted as bypass, never captured.
    assert c["connect_capture"] == 1 and c["agent_bypass"] >= 1 and c["connect_xlate"] >= 1


def test_tcp_routes_weighted_opaque(sandbox):
    """tcp routes: opaque TCP spliced to weighted subsets, half-close passed through."""
    for name, addr in (("t1", "10.1.7.31"), ("t2", "10.1.7.32")):
        sandbox.backend(name, addr)
    sandbox.write("tcp.yaml", http_service_yaml("tcpsvc", "10.96.7.40", [("10.1.7.31", {"v": "a"}), ("10.1.7.32", {"v": "b"})],
                                                proto="TCP") + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcpsvc
spec:
  host: tcpsvc
  subsets:
  - {name: a, labels: {v: a}}
  - {name: b, labels: {v: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcpsvc
spec:
  hosts: [tcpsvc]
  tcp:
  - route:
    - destination: {host: tcpsvc, subset: a}
      weight: 75
    - destination: {host: tcpsvc, subset: b}
      weight: 25
""")
    sandbox.start_agent()
    out = sandbox.client("tcp", "10.96.7.40", 80, 1500)
    assert not out["failures"], out["failures"][:3]
    assert abs(out["backends"]["t1"] / 1500.0 - 0.75) <= 0.05, out["backends"]
    assert set(out["peers"]) == {"10.96.7.40:80"}
    assert sandbox.counters()["connect_capture"] == 1500


def test_hostile_http1_rejected_agent_keeps_serving(sandbox):
    web(sandbox, """  - route:
    - destination: {host: web, subset: v1}""")

    def raw(payload):
        r = sandbox.run(["python3", "-c", RAW, VIP, "80"], input=payload.hex())
        return r.stdout.strip()

    head = "GET / HTTP/1.1\r\nHost: web\r\n"
    cases = {
        "cl+te": (head + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        "double cl": (head + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", "400"),
        "te obfuscated": (head + "Transfer-Encoding: xchunked\r\n\r\n", "400"),
        "space before colon": (head + "X-A : b\r\n\r\n", "400"),
        "bare lf": ("GET / HTTP/1.1\nHost: web\n\n", "400"),
        "nul in value": (head + "X-A: b\x00c\r\n\r\n", "400"),
        "huge header": (head + "X-Big: " + "a" * (61 * 1024) + "\r\n\r\n", "431"),
        "101 headers": (head + "".join("X-H%d: v\r\n" % i for i in range(101)) + "\r\n", "431"),
    }
    for name, (payload, want) in cases.items():
        assert raw(payload.encode()) == want, name
    assert sandbox.requests_seen("v1") == []        # none of it reached the backend
    ok = sandbox.http("http://%s/" % VIP, 5)
    assert ok["statuses"] == {"200": 5}
    # Memory stays bounded: 250 rounds of every case (2,000 connections, 15 MiB of
    # oversized headers) leave the agent's resident set where it was, give or take.
    rss = lambda: int(open("/proc/%d/status" % sandbox.agent.pid).read().split("VmRSS:")[1].split()[0])
    before = rss()
    flood = sandbox.run(["python3", "-c", FLOOD, VIP, "80", "250"], input=json.dumps([p for p, _ in cases.values()]), timeout=300)
    assert flood.returncode == 0, flood.stderr
    refused = int(flood.stdout)
    assert refused <= 20, refused
    assert rss() - before < 24 * 1024, (before, rss())
    assert sandbox.http("http://%s/" % VIP, 5)["statuses"] == {"200": 5}
    dpe = [l for l in sandbox.access_log(2008 - refused) if l["response_flags"] == "DPE"]
    assert len(dpe) >= 2000 + len(cases) - refused


# Sends each payload of the JSON list on stdin ROUNDS times, each on a new connection.
FLOOD = r"""
import json, socket, sys
payloads = [p.encode() for p in json.loads(sys.stdin.read())]
refused = 0
for _ in range(int(sys.argv[3])):
    for p in payloads:
        try:
            s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        except ConnectionRefusedError:
            refused += 1   # loopback port reuse against a TIME_WAIT: counted, not fatal
            continue
        try:
            s.sendall(p)
            s.recv(100)
        except OSError:
            pass
        s.close()
print(refused)
"""


# Sends hex-encoded stdin bytes to ADDR PORT, prints the status code of the reply (or
# "closed") — so malformed requests go out byte for byte.
RAW = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(bytes.fromhex(sys.stdin.read()))
data = b""
try:
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    pass
print(data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else "closed")
"""


def test_fault_abort_percentage_and_delay(sandbox):
    web(sandbox, """  - match:
    - uri: {prefix: /delay}
    fault:
      delay:
        fixedDelay: 300ms
        percentage: {value: 100}
    route:
    - destination: {host: web, subset: v1}
  - fault:
      abort:
        httpStatus: 418
        percentage: {value: 25}
    route:
    - destination: {host: web, subset: v1}""")
    # 4,000 draws: ±3 points is 4.4 standard deviations, so the test does not flake.
    out = sandbox.http("http://%s/abort" % VIP, 4000)
    aborted = out["statuses"].get("418", 0) / 4000.0
    assert abs(aborted - 0.25) <= 0.03, out["statuses"]
    assert out["statuses"]["418"] + out["statuses"]["200"] == 4000
    assert len(sandbox.requests_seen("v1")) == out["statuses"]["200"]   # aborted ones never left
    start = time.time()
    r = sandbox.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://%s/delay" % VIP])
    took = time.time() - start
    assert r.stdout == "200" and 0.27 <= took <= 0.33 + 0.15, took
    flags = [l["response_flags"] for l in sandbox.access_log(4001)]
    assert flags.count("FI") == out["statuses"]["418"] and flags[-1] == "DI"


def test_mirror_gets_copies_and_its_failure_never_reaches_the_caller(sandbox):
    sandbox.http_backend("shadow", "10.1.7.13")
    sandbox.write("shadow.yaml", http_service_yaml("shadow", "10.96.7.13", [("10.1.7.13", {})]))
    web(sandbox, """  - route:
    - destination: {host: web, subset: v1}
    mirror: {host: shadow}
    mirrorPercentage: {value: 50}""")
    out = sandbox.http("http://%s/m" % VIP, 1000)
    assert out["statuses"] == {"200": 1000}
    deadline = time.time() + 5
    while time.time() < deadline and len(sandbox.requests_seen("shadow")) < 420:
        time.sleep(0.1)
    copies = sandbox.requests_seen("shadow")
    assert abs(len(copies) / 1000.0 - 0.5) <= 0.08, len(copies)
    assert copies[0]["headers"]["host"].endswith("-shadow") and copies[0]["path"] == "/m"
    # The mirror goes away: callers see nothing of it.
    [p for p in sandbox.procs if p.args[-4:-3] == ["shadow"]][0].kill()
    out = sandbox.http("http://%s/m2?delay=0" % VIP, 200)
    assert out["statuses"] == {"200": 200} and not out["failures"]


def test_connection_pool_overflow_is_503_uo(sandbox):
    """maxConnections 1 and 1 pending request: of 6 concurrent slow requests one is
    served, one waits its turn, the rest get 503 UO at once."""
    sandbox.http_backend("v1", "10.1.7.11")
    sandbox.write("web.yaml", http_service_yaml("web", VIP, [("10.1.7.11", {})]) + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
spec:
  host: web
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
""")
    sandbox.start_agent("--access-log", os.path.join(sandbox.tmp, "access.log"))
    procs = [subprocess.Popen(sandbox.in_ns(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                                                           "http://%s/slow?delay=600" % VIP], cgroup=sandbox.client_cg),
                                            stdout=subprocess.PIPE, text=True) for _ in range(6)]
    results = sorted((p.communicate(timeout=30)[0].split() for p in procs), key=lambda r: float(r[1]))
    codes = [r[0] for r in results]
    assert codes.count("200") == 2 and codes.count("503") == 4, results
    assert all(float(t) < 0.3 for c, t in results if c == "503")      # overflow answers at once
    assert max(float(t) for c, t in results if c == "200") >= 1.1      # the pending one waited its turn
    assert sorted(l["response_flags"] for l in sandbox.access_log(6)).count("UO") == 4
    assert sandbox.http("http://%s/after" % VIP, 3)["statuses"] == {"200": 3}


def test_outlier_detection_ejects_and_readmits(sandbox):
    sandbox.http_backend("good", "10.1.7.11")
    sandbox.http_backend("bad", "10.1.7.12")
    sandbox.write("web.yaml", http_service_yaml("web", VIP, [("10.1.7.11", {}), ("10.1.7.12", {})]) + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 50
""")
    sandbox.start_agent()
    # Requests the bad backend answers with 503 (only it sees ?bad=… as failure: the good
    # one ignores the key), until it is ejected.
    out = sandbox.http("http://%s/x?fail_first=1000&key=bad&fail_on=bad" % VIP, 40)
    bad_seen = len(sandbox.requests_seen("bad"))
    # Ejected after 3 consecutive 5xx (retries of the default policy count too): it saw
    # at most a handful, the rest all went to the good one.
    assert bad_seen <= 6, bad_seen
    assert out["backends"]["good"] >= 34
    time.sleep(2.5)       # baseEjectionTime × 1 later, it is back in rotation
    before = len(sandbox.requests_seen("bad"))
    sandbox.http("http://%s/y" % VIP, 10)
    assert len(sandbox.requests_seen("bad")) > before


def test_istio_metrics_scraped_by_prometheus(sandbox):
    """Istio's metric names and labels, scraped by a real Prometheus and queried the way
    Istio dashboards query them."""
    os.makedirs(os.path.join(sandbox.cgroup, "frontend"))
    sandbox.write("frontend.yaml", """apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: shop
  annotations: {weft.io/node: node-a, weft.io/cgroup: frontend}
spec:
  address: 10.1.7.50
""")
    sandbox.backend("t1", "10.1.7.31")
    sandbox.write("tcp.yaml", http_service_yaml("tcpsvc", "10.96.7.40", [("10.1.7.31", {})], proto="TCP") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcpsvc}
spec:
  hosts: [tcpsvc]
  tcp:
  - route:
    - destination: {host: tcpsvc}
""")
    web(sandbox, """  - match:
    - uri: {prefix: /missing}
    directResponse: {status: 404}
  - route:
    - destination: {host: web, subset: v1}""")
    fe = os.path.join(sandbox.cgroup, "frontend")
    assert sandbox.http("http://%s/ok" % VIP, 30, cgroup=fe)["statuses"] == {"200": 30}
    assert sandbox.http("http://%s/missing" % VIP, 7)["statuses"] == {"404": 7}
    assert not sandbox.client("tcp", "10.96.7.40", 80, 12)["failures"]

    raw = sandbox.run(["curl", "-s", "http://127.0.0.1:15090/metrics"], check=True).stdout
    # promtool parses the exposition; its only complaint may be Istio's own choice of
    # milliseconds in a metric name, which dashboards depend on.
    lint = sandbox.run(["promtool", "check", "metrics"], input=raw)
    problems = [l for l in (lint.stdout + lint.stderr).splitlines()
                if l and l != 'istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"']
    assert problems == [], problems

    prom = Prometheus(sandbox, ["127.0.0.1:15090"])
    prom.wait('sum(istio_requests_total{reporter="source",source_workload="frontend",source_workload_namespace="shop",'
              'destination_service="web.default.svc.cluster.local",destination_service_name="web",response_code="200"})', 30)
    prom.wait('sum(istio_requests_total{destination_service_name="web",response_code="404",source_workload="unknown"})', 7)
    prom.wait('sum(istio_request_duration_milliseconds_count{destination_service_name="web"})', 37)
    prom.wait('sum(istio_response_bytes_bucket{destination_service_name="web",le="+Inf"})', 37)
    prom.wait('sum(istio_tcp_connections_opened_total{destination_service_name="tcpsvc"})', 12)
    prom.wait('sum(istio_tcp_connections_closed_total{destination_service_name="tcpsvc"})', 12)
    prom.wait('sum(istio_tcp_received_bytes_total{destination_service_name="tcpsvc"})', 12 * len(b"hello\n"))
    prom.wait('sum(istio_tcp_sent_bytes_total{destination_service_name="tcpsvc"})', 12 * len(b"t1\n"))


SLOW = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(sys.argv[2].encode())          # part of a request, then nothing more
start = time.time()
data = s.recv(1000)
print("%.2f %s" % (time.time() - start, data.split(b"\r\n")[0].decode() or "closed"))
"""


def test_slow_client_times_out(sandbox):
    sandbox.http_backend("v1", "10.1.7.11")
    sandbox.write("web.yaml", http_service_yaml("web", VIP, [("10.1.7.11", {})]) + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web}
""")
    sandbox.start_agent("--request-header-timeout", "1")
    # Headers started but never finished: 408 after the header timeout.
    r = sandbox.run(["python3", "-c", SLOW, VIP, "GET / HTTP/1.1\r\nHost: web\r\nX-Slow: "], check=True)
    took, status = r.stdout.split(" ", 1)
    assert status.strip() == "HTTP/1.1 408 Request Timeout" and 0.9 <= float(took) <= 1.5, r.stdout
    # Stalled before the protocol is even known: closed after the same timeout.
    r = sandbox.run(["python3", "-c", SLOW, VIP, "GE"], check=True)
    took, status = r.stdout.split(" ", 1)
    assert status.strip() == "closed" and 0.9 <= float(took) <= 1.5, r.stdout
    assert sandbox.http("http://%s/" % VIP, 3)["statuses"] == {"200": 3}


def lb_service(sandbox, lb_yaml):
    sandbox.http_backend("fast", "10.1.7.11")
    sandbox.http_backend("slow", "10.1.7.12")
    sandbox.write("web.yaml", http_service_yaml("web", VIP, [("10.1.7.11", {}), ("10.1.7.12", {})]) + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    loadBalancer:
%s
""" % lb_yaml)
    sandbox.start_agent()


def test_least_request_prefers_the_endpoint_with_fewer_in_flight(sandbox):
    """One endpoint answers in 200 ms, the other at once: with 8 clients at a time,
    LEAST_REQUEST sends most requests to the quick one. Envoy's two random choices pick
    the slow one twice a quarter of the time, so the quick one's share tops out at 75%;
    RANDOM would give it 50% (± 8 points at 3 sigma over 320)."""
    lb_service(sandbox, "      simple: LEAST_REQUEST")
    procs = [subprocess.Popen(sandbox.in_ns(["python3", os.path.join(HERE, "httpclient.py"),
                                             "http://%s/x?delay=200&delay_on=slow" % VIP, "40"], cgroup=sandbox.client_cg),
                              stdout=subprocess.PIPE, text=True) for _ in range(8)]
    totals = {}
    for p in procs:
        out = json.loads(p.communicate(timeout=120)[0])
        assert out["statuses"] == {"200": 40}
        for k, v in out["backends"].items():
            totals[k] = totals.get(k, 0) + v
    assert totals.get("fast", 0) / 320.0 >= 0.65, totals


def test_consistent_hash_on_header_cookie_and_query(sandbox):
    lb_service(sandbox, "      consistentHash:\n        httpHeaderName: x-user")
    seen = {}
    for user in range(12):
        out = sandbox.http("http://%s/h" % VIP, 10, "-H", "x-user: u%d" % user)
        assert len(out["backends"]) == 1, out          # one user, one endpoint
        seen[user] = list(out["backends"])[0]
    assert set(seen.values()) == {"fast", "slow"}     # and users spread over both
    # The revision that follows this write, whatever its number (a revision logged
    # before the write must not count).
    mark = len(sandbox.log())
    sandbox.write("web.yaml", open(os.path.join(sandbox.config, "web.yaml")).read().replace(
        "httpHeaderName: x-user", "httpCookie: {name: sticky, ttl: 3600s, path: /}"))
    sandbox.wait_log(r"config revision \d+ applied", after=mark)
    r = sandbox.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "http://%s/c" % VIP], check=True)
    cookie = [l for l in r.stdout.splitlines() if l.lower().startswith("set-cookie:")]
    assert cookie and "sticky=" in cookie[0] and "Max-Age=3600" in cookie[0] and "Path=/" in cookie[0], r.stdout
    value = cookie[0].split(":", 1)[1].split(";")[0].strip()
    out = sandbox.http("http://%s/c" % VIP, 20, "-H", "cookie: " + value)
    assert len(out["backends"]) == 1


def test_websocket_upgrade_through_a_routed_http_port(sandbox):
    """A WebSocket handshake passes the L7 proxy (Istio allows the upgrade on HTTP ports):
    the route applies to it, the 101 reaches the client, and from then on the bytes flow
    both ways untouched — the server's first bytes, sent with its 101, included."""
    sandbox.ws_backend("ws", "10.1.7.21")
    sandbox.write("ws.yaml", http_service_yaml("ws", VIP, [("10.1.7.21", {})]) + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ws}
spec:
  hosts: [ws]
  http:
  - route:
    - destination: {host: ws}
    headers: {request: {set: {x-route: ws}}}
""")
    sandbox.start_agent("--access-log", os.path.join(sandbox.tmp, "access.log"))
    for i in range(3):
        r = sandbox.run(["python3", os.path.join(HERE, "wspeer.py"), "client", VIP, "80", "/chat%d" % i], check=True)
        out = json.loads(r.stdout)
        assert out == {"status": "HTTP/1.1 101 Switching Protocols", "accept_ok": True, "upgrade": "websocket",
                       "connection": "Upgrade", "greeting": "hello from ws", "echo": "PING-1"}, out
    seen = sandbox.requests_seen("ws")
    assert [s["line"] for s in seen] == ["GET /chat%d HTTP/1.1" % i for i in range(3)]
    assert all(s["headers"]["upgrade"] == "websocket" and s["headers"]["x-route"] == "ws" for s in seen), seen
    lines = sandbox.access_log(3)
    assert [l["response_code"] for l in lines] == [101] * 3, lines



# Half-closing HTTP/1.1 clients (as `nc -N` and `curl --upload-file -` with a closed
# stdin do): ADDR PORT; prints, for each case, what came back before the connection
# closed (None when the agent left it open for 3 s).
HALF_CLOSE = r"""
import json, socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
def req(path):
    return ("GET %s HTTP/1.1\r\nHost: web\r\n\r\n" % path).encode()
def until_closed(s):
    s.settimeout(3)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk
    except socket.timeout:
        return None
out = {}
# A request, then FIN at once: the backend answers 300 ms later.
s = socket.create_connection((addr, port))
s.sendall(req("/slow?delay=300"))
s.shutdown(socket.SHUT_WR)
out["waiting"] = until_closed(s)
# Two pipelined requests, then FIN.
s = socket.create_connection((addr, port))
s.sendall(req("/one") + req("/two"))
s.shutdown(socket.SHUT_WR)
out["pipelined"] = until_closed(s)
# A request answered, then FIN while the connection is idle.
s = socket.create_connection((addr, port))
s.sendall(req("/first"))
s.settimeout(3)
got = b""
while b"\r\n\r\n" not in got or not got.endswith(b"}"):
    got += s.recv(65536)
s.shutdown(socket.SHUT_WR)
out["idle"] = until_closed(s)
# Half a request head, then FIN: it can never complete.
s = socket.create_connection((addr, port))
s.sendall(b"GET /partial HTTP/1.1\r\nHo")
s.shutdown(socket.SHUT_WR)
out["partial"] = until_closed(s)
# Nothing at all, then FIN (a TCP health check, wrk's last connection at its exit).
s = socket.create_connection((addr, port))
s.shutdown(socket.SHUT_WR)
out["silent"] = until_closed(s)
print(json.dumps(out))
"""


def test_half_closing_client_gets_its_answers_and_is_closed(sandbox):
    """A client that sends its requests and half-closes gets every response, then the
    agent closes the connection; a keep-alive connection the client half-closes while
    idle, or in the middle of a request head, is closed at once instead of being held
    open until the idle timeout."""
    web(sandbox, """  - route:
    - destination: {host: web, subset: v1}""")
    got = json.loads(sandbox.run(["/usr/bin/python3", "-c", HALF_CLOSE, VIP, "80"], check=True, timeout=60).stdout)
    assert got["waiting"] is not None and got["waiting"].startswith("HTTP/1.1 200"), got
    assert got["pipelined"] is not None and got["pipelined"].count("HTTP/1.1 200") == 2, got
    assert got["pipelined"].index('"/one"') < got["pipelined"].index('"/two"'), got
    assert got["idle"] == "", got
    assert got["partial"] == "", got
    assert got["silent"] == "", got
    assert [r["path"] for r in sandbox.requests_seen("v1")] == ["/slow?delay=300", "/one", "/two", "/first"]


# An HTTP/1.1 server on ADDR:8080 answering every GET with 8 MiB (Content-Length).
BIG_SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"y" * (8 << 20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer((sys.argv[1], 8080), H)
print("ready", flush=True)
s.serve_forever()
"""

# Asks ADDR:80 for it with Connection: close and reads slowly (8 KiB a millisecond);
# prints the body's length when the connection closes.
SLOW_READER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(b"GET /big HTTP/1.1\r\nHost: big\r\nConnection: close\r\n\r\n")
s.settimeout(10)
got = b""
while True:
    c = s.recv(8192)
    if not c:
        break
    got += c
    time.sleep(0.001)
print(len(got.partition(b"\r\n\r\n")[2]))
"""


def test_a_response_that_closes_the_connection_arrives_whole(sandbox):
    """Connection: close: the agent closes after the response — once all of it has gone
    to the socket, not while the last of it still waits for a slow reader (it lost the
    last ~40 KiB of 8 MiB before)."""
    sandbox._server("big", "10.1.7.61", ["/usr/bin/python3", "-c", BIG_SERVER, "10.1.7.61"])
    sandbox.write("big.yaml", routed_service_yaml("big", "10.96.7.61", [("10.1.7.61", {})]))
    sandbox.start_agent()
    r = sandbox.run(["/usr/bin/python3", "-c", SLOW_READER, "10.96.7.61"], check=True, timeout=60)
    assert r.stdout.strip() == str(8 << 20)
