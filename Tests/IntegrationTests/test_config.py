"""Config pushed with `weft apply`: atomic commits, read-back, diff, history, rollback,
durability across restarts and crashes, and the admin socket's defences."""
import json
import os
import signal
import socket
import subprocess

from conftest import WEFT, service_yaml, sh

VIP = "10.96.0.10"
B = ["10.250.1.1", "10.250.1.2"]


def write(sandbox, name, text):
    path = os.path.join(sandbox.tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def admin(sandbox, *args, check=True):
    return sandbox.weft(*args, "--admin-socket", sandbox.sock, check=check)


def status(sandbox):
    return json.loads(admin(sandbox, "status").stdout)


def test_apply_programs_the_datapath_and_reads_back(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.start_agent()
    assert status(sandbox)["revision"] == 1  # the (empty) config dir
    f = write(sandbox, "web.yaml", service_yaml("web", [VIP], [(B[0], 1)]))
    out = admin(sandbox, "apply", "-f", f).stdout
    assert out.startswith("applied: revision 2 (datapath programmed in ") and " ms)" in out, out
    assert sandbox.client("tcp", VIP, 80, 10)["backends"] == {"b1": 10}
    assert "unchanged: revision 2" in admin(sandbox, "apply", "-f", f).stdout
    table = admin(sandbox, "get", "se").stdout
    assert "ServiceEntry  default    web   apply" in table, table
    doc = json.loads(admin(sandbox, "get", "serviceentries", "web", "-n", "default", "-o", "json").stdout)
    assert doc["spec"]["addresses"] == [VIP] and doc["metadata"]["name"] == "web"
    assert "kind: ServiceEntry" in admin(sandbox, "get", "ServiceEntry", "web", "-o", "yaml").stdout
    missing = admin(sandbox, "get", "se", "nope", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_apply_with_one_bad_resource_changes_nothing(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.start_agent()
    good = write(sandbox, "web.yaml", service_yaml("web", [VIP], [(B[0], 1)]))
    admin(sandbox, "apply", "-f", good)
    maps = lambda: {m: sandbox.weft("map", "dump", m, "-j", "--bpffs", sandbox.bpffs).stdout for m in ("weft_svc_v1", "weft_backend_v1", "weft_slot_v1")}
    before = maps()
    # Each resource is valid alone; together they conflict (same VIP) — found only by the agent.
    batch = write(sandbox, "batch.yaml", service_yaml("api", ["10.96.0.11"], [(B[0], 1)]) + "\n---\n" +
                  service_yaml("clash", [VIP], [(B[0], 1)]))
    r = admin(sandbox, "apply", "-f", batch, check=False)
    assert r.returncode == 1
    assert "batch.yaml:18:1: error [SE008] ServiceEntry default/clash: 10.96.0.10:80/tcp is already the address of ServiceEntry default/web" in r.stdout, r.stdout
    assert "nothing was changed (still revision 2)" in r.stderr
    assert maps() == before
    assert status(sandbox)["revision"] == 2
    assert "api" not in admin(sandbox, "get", "se").stdout
    # A per-resource error is caught before anything is sent.
    bad = write(sandbox, "bad.yaml", service_yaml("x", ["10.96.0.300"], [(B[0], 1)]))
    r = admin(sandbox, "apply", "-f", bad, check=False)
    assert r.returncode == 1 and "bad.yaml:7:15: error [SE002]" in r.stdout and "not sent" in r.stderr


def test_delete_history_rollback_and_diff(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.backend("b2", B[1])
    sandbox.write("file.yaml", service_yaml("from-file", ["10.96.0.20"], [(B[0], 1)]))
    sandbox.start_agent()
    v1 = write(sandbox, "v1.yaml", service_yaml("web", [VIP], [(B[0], 1)]))
    v2 = write(sandbox, "v2.yaml", service_yaml("web", [VIP], [(B[1], 1)]))
    admin(sandbox, "apply", "-f", v1)                     # revision 2
    d = admin(sandbox, "diff", "-f", v2, check=False)
    assert d.returncode == 1 and "~ ServiceEntry default/web" in d.stdout and "-   - address: \"10.250.1.1\"\n  +   - address: \"10.250.1.2\"" in d.stdout, d.stdout
    assert admin(sandbox, "diff", "-f", v1).stdout.strip() == "= ServiceEntry default/web"
    admin(sandbox, "apply", "-f", v2)                     # revision 3
    assert sandbox.client("tcp", VIP, 80, 10)["backends"] == {"b2": 10}
    out = admin(sandbox, "rollback", "2").stdout          # revision 4 = revision 2's applied set
    assert "rolled back to revision 2: now revision 4" in out
    assert sandbox.client("tcp", VIP, 80, 10)["backends"] == {"b1": 10}
    hist = json.loads(admin(sandbox, "history", "-j").stdout)
    assert [(h["revision"], h["reason"]) for h in hist] == [(1, "files"), (2, "apply"), (3, "apply"), (4, "rollback to 2")]
    assert [h["current"] for h in hist] == [False, False, False, True]
    # A resource of the config dir cannot be deleted or overridden through the socket.
    ff = write(sandbox, "ff.yaml", service_yaml("from-file", ["10.96.0.20"], [(B[1], 1)]))
    r = admin(sandbox, "delete", "-f", ff, check=False)
    assert r.returncode == 1 and "comes from" in r.stderr and "file.yaml in the config dir" in r.stderr
    r = admin(sandbox, "apply", "-f", ff, check=False)
    assert r.returncode == 1 and "[CFG002]" in r.stdout
    assert json.loads(admin(sandbox, "history", "-j").stdout)[-1]["revision"] == 4, "a refused change must not commit"
    assert "deleted: revision 5" in admin(sandbox, "delete", "-f", v1).stdout
    assert sandbox.client("tcp", VIP, 80, 2)["failures"]
    r = admin(sandbox, "rollback", "99", check=False)
    assert r.returncode == 1 and "revision 99 is not kept" in r.stderr


def test_restart_resumes_the_last_revision_and_survives_a_torn_write(sandbox):
    sandbox.backend("b1", B[0])
    sandbox.start_agent()
    admin(sandbox, "apply", "-f", write(sandbox, "web.yaml", service_yaml("web", [VIP], [(B[0], 1)])))
    assert sandbox.stop_agent(signal.SIGINT) == 0       # datapath removed entirely
    # A crash during the next commit: the revision file written (or half written) but
    # `current` not yet moved.
    revs = os.path.join(sandbox.state, "revisions")
    with open(os.path.join(revs, "2.json")) as f:
        rec = json.load(f)
    rec["revision"] = 3
    rec["documents"] = []
    with open(os.path.join(revs, "3.json"), "w") as f:
        json.dump(rec, f)
    with open(os.path.join(revs, "4.json.tmp-12345"), "w") as f:
        f.write('{"revision": 4, "docu')
    with open(os.path.join(sandbox.state, "current.tmp-12345"), "w") as f:
        f.write("3")
    sandbox.start_agent()
    assert "config revision 2 applied" in sandbox.log()
    assert status(sandbox)["revision"] == 2
    assert sandbox.client("tcp", VIP, 80, 5)["backends"] == {"b1": 5}
    assert "web" in admin(sandbox, "get", "se").stdout
    # The next commit numbers past anything on disk and cleans the debris.
    admin(sandbox, "apply", "-f", write(sandbox, "api.yaml", service_yaml("api", ["10.96.0.11"], [(B[0], 1)])))
    assert status(sandbox)["revision"] == 4
    assert not [n for n in os.listdir(revs) if ".tmp" in n]


def test_admin_socket_defences(sandbox):
    sandbox.start_agent()
    assert oct(os.stat(sandbox.sock).st_mode & 0o777) == "0o600"

    def raw(payload, uid=None):
        def demote():
            if uid is not None:
                os.setgid(65534)
                os.setuid(uid)
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read()); "
                "s.shutdown(socket.SHUT_WR); print(s.recv(65536).decode())")
        return subprocess.run(["python3", "-c", code, sandbox.sock], input=payload, capture_output=True, timeout=20, preexec_fn=demote)

    for junk in (b"not json\n", b'{"op": "explode"}\n', b"\n", b'{"op": "rollback"}\n', b"\xff\xfe\x00garbage"):
        reply = json.loads(raw(junk).stdout)
        assert reply["ok"] is False and reply["error"], junk
    # A non-root peer that gets past the file mode is still refused by SO_PEERCRED.
    os.chmod(sandbox.tmp, 0o711)
    os.chmod(sandbox.sock, 0o666)
    refused = raw(b'{"op": "status"}\n', uid=65534)
    assert refused.returncode == 0, refused.stderr
    assert json.loads(refused.stdout) == {"ok": False, "error": "the admin socket serves root only"}
    assert "admin request refused: peer is not root" in sandbox.log()
    os.chmod(sandbox.sock, 0o600)
    # Still serving after all of that.
    assert status(sandbox)["revision"] == 1


def test_concurrent_applies_are_serialized(sandbox):
    sandbox.start_agent()
    files = [write(sandbox, "s%d.yaml" % i, service_yaml("s%d" % i, ["10.96.1.%d" % (i + 1)], [(B[0], 1)])) for i in range(8)]
    procs = [subprocess.Popen([WEFT, "apply", "-f", f, "--admin-socket", sandbox.sock], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in files]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    revisions = sorted(int(o[0].split("revision ")[1].split()[0]) for o in outs)
    assert revisions == list(range(2, 10)), revisions  # one commit each, none lost
    assert len(sandbox.services()) == 8
    assert len(json.loads(admin(sandbox, "history", "-j").stdout)) == 9


def test_validate_offline_reports_every_problem_and_unknown_nodes(sandbox):
    bad = write(sandbox, "two.yaml", service_yaml("a", ["10.96.0.300"], [(B[0], 1)]).replace("number: 80", "number: 0"))
    r = subprocess.run([WEFT, "validate", "-f", bad], capture_output=True, text=True)
    assert r.returncode == 1
    assert "[VAL001]" in r.stdout and "[SE002]" in r.stdout, r.stdout
    we = write(sandbox, "we.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w\n"
               "  annotations: {weft.io/node: node-z}\nspec: {address: 10.0.0.1}\n")
    r = subprocess.run([WEFT, "validate", "-f", we, "--node", "node-a"], capture_output=True, text=True)
    assert r.returncode == 0 and "warning [WE006]" in r.stdout and "node node-z (weft.io/node) is not a known node (node-a)" in r.stdout
