#!/usr/bin/python3
"""A real OTLP/gRPC trace receiver: OpenTelemetry's own protos (the opentelemetry-proto
package, scripts/lib.sh puts it in .build/pylib) served with grpcio. Writes one JSON line
per span received.

  otlpreceiver.py ADDR PORT SPANS.jsonl
  otlpreceiver.py ADDR PORT -      only counts them: prints "spans N" every second
                                   (scripts/bench l7, where writing JSON would be the cost)
"""
import json
import os
import sys
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".build", "pylib"))

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path):
        self.out = open(path, "a", buffering=1) if path != "-" else None
        self.count = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        if self.out is None:
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with self.lock:
                self.count += n
            return trace_service_pb2.ExportTraceServiceResponse()
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.out.write(json.dumps({
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(), "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name, "kind": KINDS.get(s.kind, str(s.kind)), "status": s.status.code,
                        "attributes": {a.key: value(a.value) for a in s.attributes}, "resource": resource,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano}) + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    addr, port, path = sys.argv[1], sys.argv[2], sys.argv[3]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Receiver(path)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    server.add_insecure_port("%s:%s" % (addr, port))
    server.start()
    print("listening", flush=True)
    while path == "-":
        time.sleep(1)
        print("spans %d" % receiver.count, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
