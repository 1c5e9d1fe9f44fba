#!/usr/bin/python3
"""gRPC test peer (Debian's python3-grpcio; no generated code: raw-bytes methods).

  grpcpeer.py server NAME ADDR PORT LOGFILE
      /weft.Test/Unary   replies NAME (records each call in LOGFILE)
      /weft.Test/Stream  server streaming: replies `n` messages (request body = n)
      /weft.Test/Status  fails with the status named in metadata `want-status`; with
                         metadata `fail-first: K`, only the first K calls of key `key`
      /weft.Test/Slow    sleeps `ms` (request body) before replying
  grpcpeer.py client TARGET METHOD COUNT [--timeout S] [--body B] [--meta k=v]... [--duration S]
      prints JSON: status code names, replies (backend names), messages received, the
      first errors; with --duration, calls one after another for S seconds (COUNT is
      ignored) or until SIGINT, which ends the loop after the call in progress
"""
import json
import signal
import sys
import threading
import time
from concurrent import futures

import grpc


def ident(x):
    return x


def server(name, addr, port, logfile):
    log = open(logfile, "a", buffering=1)
    lock = threading.Lock()
    seen = {}

    def record(method, context):
        md = dict(context.invocation_metadata())
        log.write(json.dumps({"method": method, "metadata": md, "time": time.time()}) + "\n")
        return md

    def unary(req, context):
        record("Unary", context)
        return name.encode()

    def stream(req, context):
        record("Stream", context)
        for i in range(int(req or b"1")):
            yield ("%s:%d" % (name, i)).encode()

    def status(req, context):
        md = record("Status", context)
        want = getattr(grpc.StatusCode, md.get("want-status", "OK"))
        if "fail-first" in md:
            with lock:
                seen[md.get("key", "")] = seen.get(md.get("key", ""), 0) + 1
                if seen[md.get("key", "")] > int(md["fail-first"]):
                    return name.encode()
        if want != grpc.StatusCode.OK:
            context.abort(want, "asked for " + want.name)
        return name.encode()

    def slow(req, context):
        record("Slow", context)
        time.sleep(int(req or b"0") / 1000.0)
        return name.encode()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
        "Status": grpc.unary_unary_rpc_method_handler(status, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
    }
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("weft.Test", handlers),))
    target = "[%s]:%s" % (addr, port) if ":" in addr else "%s:%s" % (addr, port)
    srv.add_insecure_port(target)
    srv.start()
    print("ready", flush=True)
    srv.wait_for_termination()


def client(target, method, count, args):
    timeout = float(args[args.index("--timeout") + 1]) if "--timeout" in args else 10
    body = args[args.index("--body") + 1].encode() if "--body" in args else b""
    meta = [tuple(args[i + 1].split("=", 1)) for i, a in enumerate(args) if a == "--meta"]
    until = time.time() + float(args[args.index("--duration") + 1]) if "--duration" in args else None
    out = {"codes": {}, "replies": {}, "messages": 0, "elapsed": [], "errors": []}
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    first = time.time()
    with grpc.insecure_channel(target) as ch:
        i = 0
        while not stop and (i < count if until is None else time.time() < until):
            md = [(k, v.replace("{i}", str(i))) for k, v in meta]
            start = time.time()
            try:
                if method == "Stream":
                    call = ch.unary_stream("/weft.Test/Stream", ident, ident)
                    for msg in call(body, timeout=timeout, metadata=md):
                        out["messages"] += 1
                    code = "OK"
                else:
                    reply = ch.unary_unary("/weft.Test/" + method, ident, ident)(body, timeout=timeout, metadata=md)
                    out["replies"][reply.decode()] = out["replies"].get(reply.decode(), 0) + 1
                    code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                if len(out["errors"]) < 5:
                    out["errors"].append("%s: %s (call %d, %.3f s after the first)" % (code, e.details(), i, time.time() - first))
            out["elapsed"].append(time.time() - start)
            out["codes"][code] = out["codes"].get(code, 0) + 1
            i += 1
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(*sys.argv[2:6])
    else:
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
