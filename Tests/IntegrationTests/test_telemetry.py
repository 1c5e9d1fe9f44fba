"""What the mesh shows: Istio's metrics from two agents, scraped by a real Prometheus and
read through Istio's own Grafana dashboard queries."""
import json
import os
import re
import subprocess
import time

from conftest import Prometheus
from test_hostile import rss_mb
from test_mtls import setup

HERE = os.path.dirname(os.path.abspath(__file__))
WEB = "web.default.svc.cluster.local"
ECHO = "echo.default.svc.cluster.local"

# Istio's standard labels of istio_requests_total (its "Istio Standard Metrics" page).
ISTIO_REQUEST_LABELS = {
    "reporter", "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
    "source_principal", "source_app", "source_version", "source_cluster", "destination_workload",
    "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
    "destination_service", "destination_canonical_service", "destination_canonical_revision", "destination_service_name",
    "destination_service_namespace", "destination_cluster", "request_protocol", "response_code", "grpc_response_status",
    "response_flags", "connection_security_policy",
}

def dashboards():
    return json.load(open(os.path.join(HERE, "data", "istio_dashboards.json")))["dashboards"]


def fill(expr, values):
    """Grafana's substitution of the dashboard's variables ("All" is the regex .*)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("$" + name, values[name])
    assert "$" not in expr, expr
    return expr


def test_istio_dashboards_read_two_agents(mesh):
    frontend = setup(mesh, start=False)
    mesh.start("--metrics-address", "0.0.0.0")
    a, b = mesh.a, mesh.b
    prom = Prometheus(a, ["127.0.0.1:15090", "10.99.0.2:15090"])
    assert a.http("http://10.96.7.7/", 20, cgroup=frontend)["statuses"] == {"200": 20}
    r = a.client("tcp", "10.96.7.8", 9000, 6, cgroup=frontend)
    assert r["backends"] == {"echo": 6} and not r["failures"], r

    # Both reporters, both agents, every request: the source agent saw it leave, the
    # destination agent saw it arrive over mTLS from the frontend's verified identity.
    prom.wait('sum(istio_requests_total{reporter="source",source_workload="frontend",destination_service="%s",'
              'destination_workload="web-b",destination_principal="spiffe://cluster.local/ns/default/sa/web",'
              'response_code="200"})' % WEB, 20)
    prom.wait('sum(istio_requests_total{reporter="destination",source_workload="frontend",'
              'source_principal="spiffe://cluster.local/ns/default/sa/frontend",destination_workload="web-b",'
              'destination_canonical_service="web",connection_security_policy="mutual_tls",request_protocol="http"})', 20)
    prom.wait('sum(istio_tcp_connections_closed_total{reporter="destination",destination_service="%s",'
              'connection_security_policy="mutual_tls",request_protocol="tcp"})' % ECHO, 6)
    # Istio's label set, no more and no less (an HTTP request has no gRPC status: the
    # label is empty, which Prometheus stores as absent, as it does Istio's).
    series = prom.api("series", **{"match[]": 'istio_requests_total{destination_service="%s"}' % WEB})["data"]
    assert len(series) == 2 and all(set(s) - {"__name__", "instance", "job"} == ISTIO_REQUEST_LABELS - {"grpc_response_status"}
                                    for s in series), series
    # The kernel's counters are in the same exposition: node a's connect() hook sent the
    # frontend's connections to its agent (one keep-alive connection for the HTTP
    # requests, six TCP ones).
    capture = prom.query('weft_datapath_events_total{event="connect_capture",instance="127.0.0.1:15090"}')
    assert capture and float(capture[0]["value"][1]) >= 7, capture

    # irate() wants two samples of each series after the traffic.
    prom.wait('count(irate(istio_requests_total{destination_service="%s"}[1m]))' % WEB, 2)
    prom.wait('count(irate(istio_tcp_sent_bytes_total{destination_service="%s"}[1m]))' % ECHO, 2)

    # Every query of Istio's Service and Workload dashboards runs, and every panel shows
    # the demo's services: for some service (or workload) of the demo, one of the panel's
    # queries returns series. Grafana's defaults: reporter "destination", "All" elsewhere.
    common = {"qrep": "destination", "srcns": ".*", "srcwl": ".*", "dstns": ".*", "dstwl": ".*", "dstsvc": ".*",
              "__rate_interval": "1m"}
    choices = {"Istio Service Dashboard": [dict(common, service=s) for s in (WEB, ECHO)],
               "Istio Workload Dashboard": [dict(common, namespace="default", workload=w) for w in ("web-b", "echo-b", "frontend")]}
    empty = []
    for name, panels in dashboards().items():
        for panel in panels:
            shown = False
            for values in choices[name]:
                for expr in panel["exprs"]:
                    if prom.query(fill(expr, values)):
                        shown = True
            if not shown:
                empty.append("%s / %s / %s" % (name, panel["row"], panel["title"]))
    assert not empty, empty


class Receiver:
    """otlpreceiver.py (a real OTLP/gRPC endpoint) on all of node a's addresses."""

    def __init__(self, node):
        self.path = os.path.join(node.tmp, "spans.jsonl")
        self.log = os.path.join(node.tmp, "otlpreceiver.log")
        servers = os.path.join(node.cgroup, "servers")
        os.makedirs(servers, exist_ok=True)
        node.procs.append(subprocess.Popen(
            node.in_ns(["/usr/bin/python3", os.path.join(HERE, "otlpreceiver.py"), "0.0.0.0", "4317", self.path], cgroup=servers),
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w")))

    def spans(self):
        if not os.path.exists(self.path):
            return []
        return [json.loads(l) for l in open(self.path) if l.strip()]

    def trace(self, trace_id, count, timeout=30):
        """The `count` spans of one trace (the exporters batch: they come in a while)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = [s for s in self.spans() if s["trace_id"] == trace_id]
            if len(got) >= count:
                return got
            time.sleep(0.5)
        log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
        raise AssertionError("trace %s: %d spans, not %d: %s; receiver: %s" % (trace_id, len(got), count, self.spans(), log))


def traceparent(headers):
    """(trace id, parent span id, flags) of a traceparent field."""
    _, trace, span, flags = headers["traceparent"].split("-")
    return trace, span, flags


def traced_call(mesh, frontend, *headers):
    """One request from node a's frontend to web on node b; the headers web received."""
    args = []
    for h in headers:
        args += ["-H", h]
    r = mesh.a.http("http://10.96.7.7/traced", 1, *args, cgroup=frontend)
    assert r["statuses"] == {"200": 1}, r
    return {k.lower(): v for k, v in mesh.b.requests_seen("web")[-1]["headers"].items()}


def hop_spans(receiver, trace_id):
    """a's client span and b's server span of the trace, b's the child of a's."""
    spans = receiver.trace(trace_id, 2)
    client = [s for s in spans if s["kind"] == "CLIENT"]
    server = [s for s in spans if s["kind"] == "SERVER"]
    assert len(client) == 1 and len(server) == 1, spans
    assert server[0]["parent_span_id"] == client[0]["span_id"], spans
    return client[0], server[0]


def test_traces_across_two_nodes(mesh):
    """A request from node a's frontend to node b's web through the mTLS tunnel leaves a
    span at each agent, b's the child of a's, in the caller's trace when it has one (W3C
    or B3, whose format it keeps); a caller's decision is followed either way, even by a
    node that samples nothing of its own."""
    frontend = setup(mesh, start=False)
    a, b = mesh.a, mesh.b
    receiver = Receiver(a)
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), "--tracing-endpoint", "127.0.0.1:4317", "--tracing-sampling", "100",
                  node="node-a")
    b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), "--tracing-endpoint", "http://10.99.0.1:4317", "--tracing-sampling", "0",
                  node="node-b")

    call = lambda *headers: traced_call(mesh, frontend, *headers)
    hop = lambda trace_id: hop_spans(receiver, trace_id)

    # No trace context: node a starts one (100 %); node b follows its decision (0 % of
    # its own). The workload is handed b's span as its parent.
    seen = call()
    trace, parent, flags = traceparent(seen)
    assert flags == "01"
    client, server = hop(trace)
    assert parent == server["span_id"] and client["parent_span_id"] == ""
    # Istio's span tags, each side naming the workload it acted for.
    assert client["name"] == server["name"] == "web.default.svc.cluster.local:80/*"
    for span, workload, node in ((client, "frontend", "node-a"), (server, "web", "node-b")):
        attrs = span["attributes"]
        assert attrs["istio.canonical_service"] == workload and attrs["istio.namespace"] == "default", attrs
        assert attrs["http.status_code"] == 200 and attrs["http.method"] == "GET" and attrs["node_id"] == node, attrs
        assert attrs["http.url"] == "http://10.96.7.7/traced" and attrs["guid:x-request-id"] == seen["x-request-id"], attrs
        assert attrs["response_flags"] == "-" and attrs["upstream_cluster"], attrs
        assert span["resource"]["service.name"] == "weft" and span["resource"]["host.name"] == node, span
    # The client's W3C context is joined: same trace, the client's span as a's parent.
    t, p = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    seen = call("traceparent: 00-%s-%s-01" % (t, p), "tracestate: vendor=opaque")
    client, server = hop(t)
    assert client["parent_span_id"] == p
    assert traceparent(seen) == (t, server["span_id"], "01") and seen["tracestate"] == "vendor=opaque", seen
    # B3 multi with a 64-bit trace id: joined, and the workload gets B3 back, 64-bit.
    t64, p = "a3ce929d0e0e4736", "e457b5a2e4d86bd1"
    seen = call("X-B3-TraceId: " + t64, "X-B3-SpanId: " + p, "X-B3-Sampled: 1")
    client, server = hop("0" * 16 + t64)
    assert client["parent_span_id"] == p
    assert (seen["x-b3-traceid"], seen["x-b3-spanid"], seen["x-b3-parentspanid"], seen["x-b3-sampled"]) == \
        (t64, server["span_id"], client["span_id"], "1"), seen
    # B3 single.
    t = "463ac35c9f6413ad48485a3953bb6124"
    seen = call("b3: %s-%s-1" % (t, p))
    client, server = hop(t)
    assert seen["b3"] == "%s-%s-1-%s" % (t, server["span_id"], client["span_id"]), seen
    # A caller that decided not to sample: no span anywhere, and its context reaches the
    # workload untouched through both agents.
    t = "0af7651916cd43dd8448eb211c80319c"
    seen = call("traceparent: 00-%s-b7ad6b7169203331-00" % t)
    assert seen["traceparent"] == "00-%s-b7ad6b7169203331-00" % t, seen
    # (the exporters send within seconds: a later sampled trace arriving first proves
    # the unsampled one is not merely late)
    seen = call()
    hop(traceparent(seen)[0])
    assert not [s for s in receiver.spans() if s["trace_id"] == t]


TELEMETRY = """---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: weft-system}
spec:
  tracing: [{randomSamplingPercentage: %s}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  tracing: [{match: {mode: SERVER}, disableSpanReporting: true}]
"""


def test_telemetry_resources_set_sampling_and_reporting(mesh):
    """Istio's Telemetry decides over the agents' own rate: a mesh-wide 100 % makes the
    frontend's requests sampled where the agents sample nothing of their own; web's own
    Telemetry turns its server-side spans off while the decision still reaches it; a
    changed Telemetry takes effect with the next revision."""
    frontend = setup(mesh, TELEMETRY % 100, start=False)
    a, b = mesh.a, mesh.b
    receiver = Receiver(a)
    for node, name, endpoint in ((a, "node-a", "127.0.0.1:4317"), (b, "node-b", "10.99.0.1:4317")):
        node.start_agent("--ca", os.path.join(node.tmp, "node-ca"), "--tracing-endpoint", endpoint, "--tracing-sampling", "0", node=name)
    seen = traced_call(mesh, frontend)
    trace, parent, flags = traceparent(seen)
    assert flags == "01", seen
    # Node a's CLIENT span only: node b followed the decision and passed the context on
    # without a span of its own, so the workload's parent is a's span.
    client = receiver.trace(trace, 1)[0]
    assert client["kind"] == "CLIENT" and parent == client["span_id"], client
    # Past the exporters' batch interval (5 s), b has sent all it would.
    time.sleep(6)
    assert [s["kind"] for s in receiver.spans() if s["trace_id"] == trace] == ["CLIENT"], receiver.spans()

    # The mesh now samples nothing: no spans, and no trace fields (node b reads their
    # absence on a tunnel request as node a's decision).
    mesh.write("mesh.yaml", open(os.path.join(a.config, "mesh.yaml")).read().replace(TELEMETRY % 100, TELEMETRY % 0))
    for node in (a, b):
        node.wait_log(r"config revision 2 applied")
    before = len(receiver.spans())
    seen = traced_call(mesh, frontend)
    assert "traceparent" not in seen, seen
    time.sleep(6)
    assert len(receiver.spans()) == before, receiver.spans()[before:]


def chromium(node, *args, timeout=120):
    """Debian's headless Chromium in the node's namespace, run as root (no sandbox), with
    virtual time so the page's script has run (and fetched) before the DOM is taken."""
    profile = os.path.join(node.tmp, "chromium")
    os.makedirs(profile, exist_ok=True)
    return node.run(["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + profile,
                     "--virtual-time-budget=5000"] + list(args), timeout=timeout)


def test_service_graph_in_the_cli_and_a_real_browser(mesh):
    """The agent's service graph, from its own metrics: in `weft graph` and on the page
    its metrics port serves, loaded and rendered by a real headless Chromium."""
    frontend = setup(mesh)
    a = mesh.a
    assert a.http("http://10.96.7.7/", 40, cgroup=frontend)["statuses"] == {"200": 40}
    assert not a.client("tcp", "10.96.7.8", 9000, 5, cgroup=frontend)["failures"]
    g = json.loads(a.weft("graph", "-j", "--admin-socket", a.sock).stdout)
    edges = {(e["source"], e["destination"]): e for e in g["edges"]}
    web = edges[("workload:default/frontend", "service:" + WEB)]
    assert web["protocolName"] == "http" and web["total"] == 40 and web["mutualTLS"] and web["errorRate"] == 0, web
    assert g["window"] > 0 and web["rate"] > 0 and web["p99Millis"] > 0, g
    served = edges[("service:" + WEB, "workload:default/web-b")]
    assert served["total"] == 40 and served["mutualTLS"], served
    echo = edges[("workload:default/frontend", "service:" + ECHO)]
    assert echo["protocolName"] == "tcp" and echo["total"] == 5 and echo.get("errorRate") is None, echo
    text = a.weft("graph", "--admin-socket", a.sock).stdout
    assert re.search(r"default/frontend\s+%s\s+http\s+[\d.]+\s+0\.0%%\s+[\d.]+\s+yes\s+40" % re.escape(WEB), text), text

    # The page: Chromium runs its script, which fetches graph.json and draws the SVG.
    dom = chromium(a, "--dump-dom", "http://127.0.0.1:15090/graph").stdout
    assert '<g class="edge mtls" data-source="workload:default/frontend" data-destination="service:%s">' % WEB in dom, dom
    assert 'data-destination="workload:default/web-b"' in dom and "req/s" in dom and "conn/s" in dom, dom
    assert re.search(r"5 nodes, 4 edges · rates over \d+ s", dom), dom
    shot = os.path.join(os.environ.get("WEFT_SCREENSHOT_DIR") or a.tmp, "service-graph.png")
    chromium(a, "--screenshot=" + shot, "--window-size=1150,420", "--hide-scrollbars", "http://127.0.0.1:15090/graph")
    assert open(shot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_tracing_with_the_collector_down_holds_bounded_memory(mesh):
    """Every request sampled, the collector unreachable: requests are served as ever, the
    exporter drops what it cannot hold (and says so), and the agent's memory does not grow
    with the spans it could not send."""
    frontend = setup(mesh, start=False)
    a, b = mesh.a, mesh.b
    # Port 9 (discard) has no listener in the namespace: every export is refused.
    a.start_agent("--ca", os.path.join(a.tmp, "node-ca"), "--tracing-endpoint", "127.0.0.1:9", "--tracing-sampling", "100", node="node-a")
    b.start_agent("--ca", os.path.join(b.tmp, "node-ca"), node="node-b")
    wrk = lambda seconds: a.run(["wrk", "-t1", "-c8", "-d%ds" % seconds, "http://10.96.7.7/"], cgroup=frontend, check=True).stdout
    wrk(2)  # warm: pools, tunnel, the exporter's first failures
    before = rss_mb(a)
    out = wrk(15)
    served = int(re.search(r"(\d+) requests in", out).group(1))
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    after = rss_mb(a)
    # The exporter's queue filled and it dropped spans (its log says how many)...
    dropped = sum(int(n) for n in re.findall(r"dropped_count=(\d+)", a.log()))
    assert dropped > 0, [l for l in a.log().splitlines() if "OTel" in l or "pan" in l][-10:]
    # ...and memory stayed where 2,048 held spans put it, not where thousands more would.
    assert served > 5000 and after - before < 24, (served, before, after, dropped)

