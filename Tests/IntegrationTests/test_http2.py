"""HTTP/2 and gRPC through the proxy: curl --http2-prior-knowledge, h2load, Python grpcio
client and server, and raw frames (python3-h2) for the abuse cases."""
import json
import os
import socket
import subprocess
import time

from conftest import http_service_yaml, HERE

VIP = "10.96.8.10"


def grpc_service(sandbox, http_routes, backends=(("g1", "10.1.8.11", "v1"), ("g2", "10.1.8.12", "v2"))):
    for name, addr, _ in backends:
        sandbox.grpc_backend(name, addr)
    sandbox.write("grpc.yaml", http_service_yaml("greeter", VIP, [(a, {"version": v}) for _, a, v in backends], proto="GRPC") + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: greeter
spec:
  host: greeter
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: greeter
spec:
  hosts: [greeter]
  http:
%s
""" % http_routes)
    sandbox.start_agent("--access-log", os.path.join(sandbox.tmp, "access.log"))


def test_grpc_unary_streaming_status_and_split(sandbox):
    grpc_service(sandbox, """  - match:
    - headers:
        x-canary: {exact: "yes"}
    route:
    - destination: {host: greeter, subset: v2}
  - route:
    - destination: {host: greeter, subset: v1}
      weight: 70
    - destination: {host: greeter, subset: v2}
      weight: 30""")
    target = "%s:80" % VIP
    out = sandbox.grpc(target, "Unary", 1000)
    assert out["codes"] == {"OK": 1000}
    assert abs(out["replies"]["g2"] / 1000.0 - 0.30) <= 0.05, out["replies"]
    canary = sandbox.grpc(target, "Unary", 50, "--meta", "x-canary=yes")
    assert canary["replies"] == {"g2": 50}
    stream = sandbox.grpc(target, "Stream", 3, "--body", "200")
    assert stream["codes"] == {"OK": 3} and stream["messages"] == 600
    status = sandbox.grpc(target, "Status", 5, "--meta", "want-status=NOT_FOUND")
    assert status["codes"] == {"NOT_FOUND": 5}
    lines = sandbox.access_log(1058)
    assert {l["protocol"] for l in lines} == {"gRPC"}
    assert sorted(l["grpc_status"] for l in lines if l["path"] == "/weft.Test/Status") == [5] * 5


def test_grpc_deadline_retry_on_unavailable_and_fault(sandbox):
    grpc_service(sandbox, """  - match:
    - uri: {exact: /weft.Test/Unary}
      headers:
        x-fault: {exact: "yes"}
    fault:
      abort:
        grpcStatus: UNAVAILABLE
        percentage: {value: 100}
    route:
    - destination: {host: greeter, subset: v1}
  - route:
    - destination: {host: greeter, subset: v1}
    retries:
      attempts: 2
      retryOn: unavailable""", backends=(("g1", "10.1.8.11", "v1"),))
    target = "%s:80" % VIP
    # The client's deadline ends the call at its value, through the proxy.
    slow = sandbox.grpc(target, "Slow", 1, "--body", "3000", "--timeout", "0.5")
    assert slow["codes"] == {"DEADLINE_EXCEEDED": 1} and 0.45 <= slow["elapsed"][0] <= 0.7, slow
    # UNAVAILABLE on the first attempt is retried into OK.
    r = sandbox.grpc(target, "Status", 10, "--meta", "want-status=UNAVAILABLE", "--meta", "fail-first=1", "--meta", "key=k{i}")
    assert r["codes"] == {"OK": 10}, r
    assert len([x for x in sandbox.requests_seen("g1") if x["method"] == "Status"]) == 20
    # An injected gRPC abort reaches the client as that status; nothing reaches the server.
    before = len(sandbox.requests_seen("g1"))
    f = sandbox.grpc(target, "Unary", 5, "--meta", "x-fault=yes")
    assert f["codes"] == {"UNAVAILABLE": 5} and len(sandbox.requests_seen("g1")) == before


def test_http2_curl_and_h2load_split(sandbox):
    sandbox.h2_backend("n1", "10.1.8.21")
    sandbox.h2_backend("n2", "10.1.8.22")
    sandbox.write("h2.yaml", http_service_yaml("h2", VIP, [("10.1.8.21", {"v": "1"}), ("10.1.8.22", {"v": "2"})], proto="HTTP2") + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: h2}
spec:
  host: h2
  subsets:
  - {name: a, labels: {v: "1"}}
  - {name: b, labels: {v: "2"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: h2}
spec:
  hosts: [h2]
  http:
  - route:
    - destination: {host: h2, subset: a}
      weight: 90
    - destination: {host: h2, subset: b}
      weight: 10
    headers:
      request:
        set: {x-team: green}
""")
    sandbox.start_agent()
    r = sandbox.run(["curl", "-s", "--http2-prior-knowledge", "-w", "|%{http_version}", "http://%s/hi" % VIP], check=True)
    assert r.stdout.endswith("green\n|2") and r.stdout.split()[1] == "/hi"
    # h2load: 4 connections × 10 concurrent streams; nginx closes each upstream
    # connection after 1000 requests (GOAWAY), which the pool must ride through.
    r = sandbox.run(["h2load", "-n", "6000", "-c", "4", "-m", "10", "http://%s/load" % VIP], timeout=300, check=True)
    assert "6000 succeeded, 0 failed" in r.stdout, r.stdout
    counts = {}
    out = sandbox.run(["sh", "-c", "for i in $(seq 1 1000); do curl -s --http2-prior-knowledge http://%s/s; done" % VIP], timeout=300)
    for line in out.stdout.split("\n"):
        if line:
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    assert abs(counts.get("n2", 0) / 1000.0 - 0.10) <= 0.03, counts


def test_http2_abuse_is_contained(sandbox):
    """Rapid Reset closes the connection with GOAWAY; a header with a NUL or CR is refused
    with a stream reset; too many concurrent streams are refused; the agent serves on."""
    sandbox.h2_backend("n1", "10.1.8.21")
    sandbox.write("h2.yaml", http_service_yaml("h2", VIP, [("10.1.8.21", {})], proto="HTTP2") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: h2}
spec:
  hosts: [h2]
  http:
  - route:
    - destination: {host: h2}
""")
    sandbox.start_agent()
    r = sandbox.run(["/usr/bin/python3", os.path.join(HERE, "h2abuse.py"), VIP, "80"], timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["rapid_reset"] == "goaway:ENHANCE_YOUR_CALM", res
    assert res["bad_header"] in ("reset", "goaway:PROTOCOL_ERROR"), res
    assert res["max_streams"] == 100, res
    ok = sandbox.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", "http://%s/" % VIP])
    assert ok.stdout == "200"
