"""Privileged integration tests: the real weft binary, real kernel hooks, network
namespaces and cgroups created here and removed here (../shared/TESTING.md).

Every object is named weft-test-<id>: namespace, cgroup, bpffs pin dir, temp dir. The
session starts by sweeping leftovers of a crashed earlier run.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
WEFT = os.environ.get("WEFT_BIN", os.path.join(ROOT, ".build", "debug", "weft"))


def cgroup2_mount():
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "cgroup2":
                return parts[1]
    raise RuntimeError("no cgroup2 mount")


CG2 = cgroup2_mount()


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True, **kw)


def kill_cgroup(path):
    """Kill every process in a cgroup tree, then remove it bottom-up."""
    if not os.path.isdir(path):
        return
    for _ in range(50):
        pids = []
        for d, _, _ in os.walk(path):
            try:
                pids += open(os.path.join(d, "cgroup.procs")).read().split()
            except OSError:
                pass
        if not pids:
            break
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.1)
    for d, _, _ in sorted(os.walk(path), key=lambda x: -len(x[0])):
        try:
            os.rmdir(d)
        except OSError:
            pass


def sweep(prefix="weft-test-"):
    for line in sh("ip netns list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            sh(["ip", "netns", "pids", name], check=False)
            for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh(["ip", "netns", "del", name], check=False)
    for name in os.listdir(CG2):
        if name.startswith(prefix):
            kill_cgroup(os.path.join(CG2, name))
    if os.path.isdir("/sys/fs/bpf"):
        for name in os.listdir("/sys/fs/bpf"):
            if name.startswith(prefix):
                shutil.rmtree(os.path.join("/sys/fs/bpf", name), ignore_errors=True)
    for p in sh(["pgrep", "-f", "weft agent .*weft-test-"], check=False).stdout.split():
        try:
            os.kill(int(p), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session", autouse=True)
def _session():
    if os.geteuid() != 0:
        pytest.exit("integration tests need root (they attach BPF programs)", returncode=2)
    if not os.path.exists(WEFT):
        pytest.exit("weft binary not found at %s; run scripts/test (it builds first)" % WEFT, returncode=2)
    if sh("mount | grep -q ' /sys/fs/bpf type bpf'", check=False).returncode != 0:
        sh("mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf")
    sweep()
    yield
    sweep()


# No single test may hold the suite: a hung peer or agent fails that test (its fixtures
# still clean up) instead of running CI into its time limit.
TEST_TIMEOUT = int(os.environ.get("WEFT_TEST_TIMEOUT", "600"))


class TestTimedOut(Exception):
    pass


@pytest.fixture(autouse=True)
def _per_test_timeout(request):
    def expire(signum, frame):
        raise TestTimedOut("%s ran past %ds (WEFT_TEST_TIMEOUT)" % (request.node.nodeid, TEST_TIMEOUT))
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


SERVICE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
spec:
  hosts: [{name}.default.svc.cluster.local]
  addresses: [{vips}]
  ports:
  - number: {port}
    name: p
    protocol: {proto}
    targetPort: {target}
  resolution: STATIC
  endpoints:
{endpoints}"""


def http_service_yaml(name, vip, endpoints, port=80, target=8080, proto="HTTP"):
    """endpoints: list of (address, {labels})."""
    eps = "\n".join("  - address: \"%s\"\n    labels: %s" % (a, json.dumps(l)) for a, l in endpoints)
    return SERVICE.format(name=name, vips='"%s"' % vip, port=port, target=target, proto=proto, endpoints=eps)


ROUTED = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
  - route:
    - destination: {{host: {name}}}"""


def routed_service_yaml(name, vip, endpoints, proto="HTTP"):
    """http_service_yaml with a VirtualService routing all of it to the service: with an
    http route the agent proxies the port (unrouted, the kernel balances it)."""
    return http_service_yaml(name, vip, endpoints, proto=proto) + ROUTED.format(name=name)


def service_yaml(name, vips, backends, port=80, target=8080, proto="TCP"):
    """backends: list of (address, weight)."""
    eps = "\n".join("  - address: \"%s\"\n    weight: %d" % (a, w) for a, w in backends)
    return SERVICE.format(name=name, vips=", ".join('"%s"' % v for v in vips), port=port, target=target, proto=proto, endpoints=eps)


NGINX_H2 = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/nginx-{name}.err;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  client_max_body_size 64m;
  server {{
    listen {addr}:{port} http2;
    location / {{ add_header X-Backend {name}; return 200 "{name} $request_uri $http_x_team\\n"; }}
    location /files/ {{ root {tmp}; }}
    {extra}
  }}
}}
"""


class Prometheus:
    """A real Prometheus in `node`'s namespace on 127.0.0.1:9090, scraping `targets` (the
    agents' /stats/prometheus, as Istio's scrape configs name it) every second."""

    def __init__(self, node, targets):
        self.node = node
        conf = os.path.join(node.tmp, "prometheus.yml")
        open(conf, "w").write("global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: weft\n"
                              "  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: %s\n" % json.dumps(targets))
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
        """Waits until the sum `q` reads `want` (scraped after the traffic)."""
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


class Sandbox:
    """One node: a namespace with backend addresses on lo, a cgroup the agent attaches
    to (with a `client` child), a config dir, and at most one running agent."""

    def __init__(self):
        self.id = "weft-test-" + uuid.uuid4().hex[:8]
        self.ns = self.id
        self.cgroup = os.path.join(CG2, self.id)
        self.client_cg = os.path.join(self.cgroup, "client")
        # The agent's own cgroup, outside --cgroup like a systemd unit's: the kernel takes
        # sockets made there (and only there) for the agent's.
        self.agent_cg = self.cgroup + "-agent"
        self.bpffs = "/sys/fs/bpf/" + self.id
        self.tmp = tempfile.mkdtemp(prefix=self.id + "-")
        self.config = os.path.join(self.tmp, "config")
        self.sock = os.path.join(self.tmp, "agent.sock")
        self.state = os.path.join(self.tmp, "state")
        self.procs = []
        self.prog_ids = set()  # every program id an agent of this sandbox attached
        self.agent = None
        self.agent_log = None
        os.makedirs(self.config)
        sh(["ip", "netns", "add", self.ns])
        sh(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        os.makedirs(self.client_cg)
        os.makedirs(self.agent_cg)

    def add_address(self, addr):
        plen = "128" if ":" in addr else "32"
        sh(["ip", "-n", self.ns, "addr", "add", "%s/%s" % (addr, plen), "dev", "lo", "nodad"] if ":" in addr
           else ["ip", "-n", self.ns, "addr", "add", "%s/%s" % (addr, plen), "dev", "lo"])

    def in_ns(self, argv, cgroup=None):
        """argv run inside the namespace (and the cgroup, if given)."""
        cg = "echo $$ > %s/cgroup.procs; " % cgroup if cgroup else ""
        return ["sh", "-c", cg + 'exec nsenter --net=/run/netns/%s "$@"' % self.ns, "sh"] + argv

    def backend(self, name, addr, port=8080, mode="tcp", cgroup=None):
        self.add_address(addr)
        p = subprocess.Popen(self.in_ns(["python3", os.path.join(HERE, "backend.py"), name, addr, str(port), mode], cgroup=cgroup),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout.readline().strip() == "ready", "backend %s did not start" % name
        self.procs.append(p)
        return p

    def _server(self, name, addr, argv, cgroup=None):
        """Starts a logging server (argv ends with its log file) and waits for "ready";
        `cgroup`: the workload cgroup it runs in (where inbound policy guards it)."""
        self.add_address(addr)
        p = subprocess.Popen(self.in_ns(argv, cgroup=cgroup), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout.readline().strip() == "ready", "backend %s did not start" % name
        self.procs.append(p)
        return p

    def _log_of(self, name):
        return os.path.join(self.tmp, "backend-%s.log" % name)

    def http_backend(self, name, addr, port=8080, cgroup=None):
        """A keep-alive HTTP/1.1 backend (httpbackend.py) that logs every request."""
        return self._server(name, addr, ["python3", os.path.join(HERE, "httpbackend.py"), name, addr, str(port), self._log_of(name)],
                            cgroup=cgroup)

    def h2_backend(self, name, addr, port=8080, cgroup=None, extra=""):
        """nginx speaking h2c (prior knowledge) on addr:port; replies "NAME URI X-TEAM"
        with an X-Backend header, serves tmp/files/ as /files/, and takes `extra`
        directives in its server block. It runs in `cgroup` (default: a `servers` cgroup of
        the sandbox's tree, so teardown kills whatever nginx forks)."""
        self.add_address(addr)
        conf = os.path.join(self.tmp, "nginx-%s.conf" % name)
        open(conf, "w").write(NGINX_H2.format(tmp=self.tmp, name=name, addr=addr, port=port, extra=extra))
        cg = cgroup or os.path.join(self.cgroup, "servers")
        os.makedirs(cg, exist_ok=True)
        self.procs.append(subprocess.Popen(self.in_ns(["nginx", "-c", conf], cgroup=cg), stderr=subprocess.DEVNULL))
        deadline = time.time() + 5
        while ":%d " % port not in sh(["nsenter", "--net=/run/netns/" + self.ns, "ss", "-Hltn", "src", addr]).stdout:
            assert time.time() < deadline, "nginx %s did not start" % name
            time.sleep(0.05)

    def ws_backend(self, name, addr, port=8080, cgroup=None):
        """A WebSocket server (wspeer.py): 101, a greeting, then an upper-casing echo."""
        return self._server(name, addr, ["python3", os.path.join(HERE, "wspeer.py"), "server", name, addr, str(port), self._log_of(name)],
                            cgroup=cgroup)

    def grpc_backend(self, name, addr, port=8080):
        """A gRPC server (grpcpeer.py, Debian's python3-grpcio) that logs every call."""
        return self._server(name, addr, ["/usr/bin/python3", os.path.join(HERE, "grpcpeer.py"), "server", name, addr, str(port),
                                         self._log_of(name)])

    def access_log(self, at_least=1):
        """Lines of the agent's --access-log (tmp/access.log), once it has `at_least`:
        a line is written just after its response goes out, so a fast client can be
        back before it is."""
        path = os.path.join(self.tmp, "access.log")
        deadline = time.time() + 5
        while True:
            lines = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
            if len(lines) >= at_least or time.time() > deadline:
                return lines

    def grpc(self, target, method, count=1, *args, cgroup="client"):
        r = self.run(["/usr/bin/python3", os.path.join(HERE, "grpcpeer.py"), "client", target, method, str(count)] + list(args),
                     cgroup=cgroup, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def requests_seen(self, name):
        """Requests backend `name` received, in order."""
        path = self._log_of(name)
        if not os.path.exists(path):
            return []
        return [json.loads(line) for line in open(path) if line.strip()]

    def http(self, url, count=1, *args, cgroup="client", timeout=300):
        """httpclient.py from a client cgroup in the namespace."""
        cg = self.client_cg if cgroup == "client" else cgroup
        r = subprocess.run(self.in_ns(["python3", os.path.join(HERE, "httpclient.py"), url, str(count)] + list(args), cgroup=cg),
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def run(self, argv, cgroup="client", timeout=120, check=False, input=None):
        """Any command (curl, h2load, …) in the namespace, from a client cgroup."""
        cg = self.client_cg if cgroup == "client" else cgroup
        r = subprocess.run(self.in_ns(argv, cgroup=cg), capture_output=True, text=True, timeout=timeout, input=input)
        if check:
            assert r.returncode == 0, "%s: %s" % (argv, r.stderr)
        return r

    def counters(self):
        r = self.weft("map", "dump", "weft_stats_v1", "-j", "--bpffs", self.bpffs)
        return {row["key"]: int(row["value"]) for row in json.loads(r.stdout)}

    def client(self, *args, cgroup="client", timeout=120):
        cg = self.client_cg if cgroup == "client" else cgroup
        r = subprocess.run(self.in_ns(["python3", os.path.join(HERE, "client.py")] + [str(a) for a in args], cgroup=cg),
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def write(self, name, text):
        # Write-then-rename, as config tools do: the agent never sees a half-written file.
        tmp = os.path.join(self.config, "." + name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.config, name))

    def weft(self, *args, check=True):
        r = subprocess.run([WEFT] + list(args), capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, "weft %s: %s" % (" ".join(args), r.stderr)
        return r

    def services(self):
        r = self.weft("service", "list", "-j", "--bpffs", self.bpffs, check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def start_agent(self, *extra, node="node-a", wait=True, cgroup=None, wrapper=(), env=None, journal=False):
        """The agent runs in the node's namespace (the sandbox's), like on a real node:
        its outbound listener must be where the captured clients are. `cgroup`: a
        cgroup to run it in (default: the sandbox's agent cgroup; e.g. one the programs
        are attached to). `wrapper`: a command the agent is run under (e.g. prlimit).
        `env`: variables added to its environment; `journal`: its log file passed off as
        the journal's stream (JOURNAL_STREAM), as systemd does."""
        self.agent_log = os.path.join(self.tmp, "agent-%d.log" % len(self.procs))
        log = open(self.agent_log, "w")
        env = dict(os.environ, **(env or {}))
        if journal:
            st = os.fstat(log.fileno())
            env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
        argv = list(wrapper) + [WEFT, "agent", "--config-dir", self.config, "--cgroup", self.cgroup,
                "--bpffs", self.bpffs, "--admin-socket", self.sock, "--state-dir", self.state, "--node", node,
                "--drain-period", "2", "--resync-interval", "0.5"] + list(extra)
        self.agent = subprocess.Popen(self.in_ns(argv, cgroup=cgroup or self.agent_cg), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(self.agent)
        if wait:
            self.wait_log(r"config revision \d+ applied|config rejected")
            self.record_programs()
        return self.agent

    def record_programs(self):
        r = self.weft("prog", "show", "-j", "--bpffs", self.bpffs, check=False)
        if r.returncode == 0:
            self.prog_ids |= {p["progID"] for p in json.loads(r.stdout)}

    def stop_agent(self, sig=signal.SIGINT):
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(sig)
            self.agent.wait(timeout=20)
        rc = self.agent.returncode if self.agent else None
        self.agent = None
        return rc

    def log(self):
        return open(self.agent_log).read() if self.agent_log else ""

    def wait_log(self, pattern, timeout=20, after=0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, self.log()[after:]):
                return
            if self.agent is not None and self.agent.poll() is not None:
                raise AssertionError("agent exited: " + self.log())
            time.sleep(0.05)
        raise AssertionError("agent log never matched %r:\n%s" % (pattern, self.log()))

    def wait_services(self, pred, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.services()
            if s is not None and pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError("datapath never reached the expected state: %s" % self.services())

    def close(self):
        self.stop_agent()
        # pytest shows what a test printed only when it failed: the agent's last words.
        if self.agent_log and os.path.exists(self.agent_log):
            print("agent log (%s), last 20,000 characters:\n%s" % (self.agent_log, self.log()[-20000:]))
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        kill_cgroup(self.cgroup)
        kill_cgroup(self.agent_cg)
        sh(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.bpffs, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def sandbox():
    s = Sandbox()
    try:
        yield s
    finally:
        s.close()
        # Nothing of the test may outlive it.
        assert not os.path.exists(s.cgroup) and not os.path.exists(s.agent_cg), "cgroup left behind"
        assert not os.path.exists(s.bpffs), "pins left behind"
        assert s.ns not in sh("ip netns list").stdout, "namespace left behind"
        live = {p["id"] for p in json.loads(sh("bpftool prog show -j").stdout or "[]")}
        assert not (live & s.prog_ids), "programs left loaded: %s" % (live & s.prog_ids)


class Mesh:
    """Two nodes (sandboxes) joined by a veth pair created in their namespaces, one root
    CA and a node CA per node (weft ca). Node a's workloads are 10.250.1.0/24, node b's
    10.250.2.0/24, on each node's lo; the link is 10.99.0.1 (a) — 10.99.0.2 (b)."""

    def __init__(self):
        self.a, self.b = Sandbox(), Sandbox()
        va, vb = self.a.id[-8:] + "va", self.b.id[-8:] + "vb"
        sh(["ip", "-n", self.a.ns, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", self.b.ns])
        for node, dev, addr, peer, remote in ((self.a, va, "10.99.0.1/30", "10.99.0.2", "10.250.2.0/24"),
                                              (self.b, vb, "10.99.0.2/30", "10.99.0.1", "10.250.1.0/24")):
            sh(["ip", "-n", node.ns, "addr", "add", addr, "dev", dev])
            sh(["ip", "-n", node.ns, "link", "set", dev, "up"])
            sh(["ip", "-n", node.ns, "route", "add", remote, "via", peer])
        self.devs = {"a": va, "b": vb}
        self.root = os.path.join(self.a.tmp, "root-ca")
        sh([WEFT, "ca", "init", "--out", self.root])
        for name, node in (("node-a", self.a), ("node-b", self.b)):
            sh([WEFT, "ca", "issue-node", "--ca", self.root, "--node", name, "--out", os.path.join(node.tmp, "node-ca")])

    def write(self, name, text):
        """The same config on both nodes (as a control plane would push it)."""
        self.a.write(name, text)
        self.b.write(name, text)

    def start(self, *extra):
        self.a.start_agent("--ca", os.path.join(self.a.tmp, "node-ca"), *extra, node="node-a")
        self.b.start_agent("--ca", os.path.join(self.b.tmp, "node-ca"), *extra, node="node-b")

    def close(self):
        for s in (self.a, self.b):
            s.close()


@pytest.fixture
def mesh():
    m = Mesh()
    try:
        yield m
    finally:
        m.close()
        for s in (m.a, m.b):
            assert not os.path.exists(s.cgroup) and not os.path.exists(s.bpffs), "left behind"
            assert s.ns not in sh("ip netns list").stdout, "namespace left behind"
