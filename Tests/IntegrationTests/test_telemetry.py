"""What the mesh shows: Istio's metrics from two agents, scraped by a real Prometheus and
read through Istio's own Grafana dashboard queries."""
import json
import os
import re
import subprocess
import time

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

PROMETHEUS = """global:
  scrape_interval: 1s
scrape_configs:
- job_name: weft
  metrics_path: /stats/prometheus
  static_configs:
  - targets: ["127.0.0.1:15090", "10.99.0.2:15090"]
"""


class Prometheus:
    """A real Prometheus in node a's namespace, scraping both agents."""

    def __init__(self, node):
        self.node = node
        conf = os.path.join(node.tmp, "prometheus.yml")
        open(conf, "w").write(PROMETHEUS)
        servers = os.path.join(node.cgroup, "servers")
        os.makedirs(servers, exist_ok=True)
        node.procs.append(subprocess.Popen(
            node.in_ns(["prometheus", "--config.file", conf, "--storage.tsdb.path", os.path.join(node.tmp, "tsdb"),
                        "--web.listen-address", "127.0.0.1:9090"], cgroup=servers),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def api(self, path, **params):
        argv = ["curl", "-s", "-G", "http://127.0.0.1:9090/api/v1/" + path]
        for k, v in params.items():
            argv += ["--data-urlencode", "%s=%s" % (k, v)]
        r = self.node.run(argv)
        return json.loads(r.stdout) if r.stdout.startswith("{") else {"status": "down", "error": r.stdout + r.stderr}

    def query(self, q):
        """The result of an instant query; raises with Prometheus' error if it fails."""
        r = self.api("query", query=q)
        assert r["status"] == "success", (q, r)
        return r["data"]["result"]

    def wait(self, q, want, timeout=40):
        """Waits until the sum `q` reads `want` (both agents scraped after the traffic)."""
        deadline, got = time.time() + timeout, None
        while time.time() < deadline:
            try:
                res = self.query(q)
                got = float(res[0]["value"][1]) if res else None
                if got == want:
                    return
            except (AssertionError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise AssertionError("%s read %s, not %s" % (q, got, want))


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
    prom = Prometheus(a)
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
