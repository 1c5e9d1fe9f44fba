"""What weft finds out about the kernel it runs on: `weft doctor`'s probes against what the
kernel really has, the probes leaving nothing behind, and the agent doing without what
it can do without. Runs on this machine's kernel and, through scripts/test-kernel, on
Debian's (6.1 in CI; 5.10, below weft's full feature set, by hand)."""
import json
import os
import subprocess
import time

from conftest import WEFT, sh

VIP = "10.96.0.10"
# A service whose workload selector matches nothing: a frontend with no endpoint.
NOWHERE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: nowhere, namespace: default}
spec:
  hosts: [nowhere.default.svc.cluster.local]
  addresses: [%s]
  ports: [{number: 80, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: nowhere}}
""" % VIP


def kernel_version():
    return tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])


def doctor(*args):
    return subprocess.run([WEFT, "doctor"] + list(args), capture_output=True, text=True, timeout=60)


def test_doctor_matches_what_this_kernel_has():
    r = doctor("-j")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["kernel"] == os.uname().release
    rows = {f["feature"]: f for f in report["features"]}
    # As root every probe can tell.
    assert all(f["status"] in ("ok", "missing") for f in rows.values()), [f for f in rows.values() if f["status"] not in ("ok", "missing")]
    # The table comes from what the objects use: every program section, the helpers
    # that set weft's floor, the ring buffer.
    for section in ("cgroup/connect4", "cgroup/connect6", "cgroup/sendmsg4", "cgroup/sendmsg6", "cgroup/recvmsg4",
                    "cgroup/recvmsg6", "cgroup/getpeername4", "cgroup/getpeername6", "sockops", "cgroup_skb/ingress", "tc"):
        assert any(k.startswith(section + " programs") for k in rows), section
    for helper in ("bpf_set_retval", "bpf_sk_assign", "bpf_sk_lookup_tcp", "bpf_ringbuf_reserve"):
        assert "helper " + helper in rows, helper
    assert rows["helper bpf_set_retval"]["usedIn"] == ["cgroup/connect4", "cgroup/connect6", "cgroup/sendmsg4", "cgroup/sendmsg6"]
    assert any(k.startswith("ringbuf maps") for k in rows)

    # Each probe agrees with the kernel's version (Debian's kernels and this machine's).
    v = kernel_version()
    def has(feature):
        return rows[feature]["status"] == "ok"
    assert has("helper bpf_set_retval") == (v >= (6, 1))
    assert has("tcx links") == (v >= (6, 6))
    assert has("BPF_LINK_UPDATE") == (v >= (5, 7))
    assert has("helper bpf_sk_assign") == (v >= (5, 7))
    assert has("atomic fetch instructions (BPF_FETCH)") == (v >= (5, 12))
    assert has("lookup-and-delete on hash maps (BPF_MAP_LOOKUP_AND_DELETE_ELEM)") == (v >= (5, 14))
    assert has("clsact qdisc with a cls_bpf direct-action filter")
    # What weft cannot do without is all there from 5.8; below 6.1, 5.14 and 5.12 a
    # thing each degrades.
    assert report["agent"] and report["agentWithInterfaces"]
    degraded = [p for p in report["problems"] if "weft does without it" in p]
    assert len(degraded) == (v < (6, 1)) + (v < (5, 14)) + (v < (5, 12)), report["problems"]
    assert report["problems"] == degraded

    text = doctor()
    assert text.returncode == 0
    assert "weft agent: runs on this kernel" in text.stdout and "weft agent --interfaces: runs on this kernel" in text.stdout
    assert text.stdout.splitlines()[0] == "kernel " + os.uname().release


def test_doctor_attaches_nothing_and_leaves_nothing():
    def programs():
        return {p["id"] for p in json.loads(sh(["bpftool", "prog", "show", "-j"]).stdout)}
    qdiscs = sh(["tc", "qdisc", "show"]).stdout
    links = sh(["bpftool", "link", "show"]).stdout
    before = programs()
    for _ in range(3):
        assert doctor("-j").returncode == 0
    # Programs are freed once their last fd closes (after an RCU grace period).
    deadline = time.time() + 10
    while programs() - before and time.time() < deadline:
        time.sleep(0.2)
    assert not programs() - before, "probe programs left loaded"
    assert sh(["tc", "qdisc", "show"]).stdout == qdiscs, "a probe changed a qdisc of this node"
    assert sh(["bpftool", "link", "show"]).stdout == links, "a probe left a link"


def test_agent_says_what_this_kernel_lacks_and_refuses_as_it_can(sandbox):
    """A connect() to a service with no endpoint: ECONNREFUSED where the kernel lets the
    hook say so (6.1), else EPERM with one warning at start naming the feature."""
    sandbox.write("nowhere.yaml", NOWHERE)
    sandbox.start_agent()
    code = ("import socket, errno\n"
            "s = socket.socket()\n"
            "try: s.connect(('%s', 80)); print('connected')\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n" % VIP)
    got = sandbox.run(["python3", "-c", code], check=True).stdout.strip()
    lacks = [l for l in sandbox.log().splitlines() if "this kernel lacks" in l]
    if kernel_version() >= (6, 1):
        assert got == "ECONNREFUSED" and lacks == []
    else:
        assert got == "EPERM"
        retval = [l for l in lacks if "helper bpf_set_retval (Linux 6.1)" in l]
        assert len(retval) == 1 and "EPERM, not ECONNREFUSED" in retval[0], lacks
