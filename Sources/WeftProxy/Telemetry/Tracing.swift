import NIOHTTP1
import Tracing
import WeftConfig

/// Distributed tracing of proxied requests (swift-distributed-tracing's API; the agent
/// gives it swift-otel's tracer, which batches spans and exports them with OTLP/gRPC).
public struct TracingSettings: Sendable {
    /// Where sampled spans go. Its sampler must follow the parent it is given: the proxy
    /// makes the sampling decision itself (below) and hands the tracer sampled parents
    /// and roots only.
    public var tracer: any Tracer
    /// Percent of requests that start a trace when they come with no sampling decision
    /// (Istio's meshConfig defaultConfig.tracing.sampling, 1 by default).
    public var samplingPercentage: Double
    /// This node's name (the spans' node_id).
    public var node: String

    public init(tracer: any Tracer, samplingPercentage: Double, node: String) {
        self.tracer = tracer
        self.samplingPercentage = samplingPercentage
        self.node = node
    }
}

/// The trace context a request came with, in whichever of the formats Istio's proxies
/// read: W3C `traceparent` (+ `tracestate`), B3 single (`b3`) or B3 multi (`x-b3-*`).
struct TraceContextIn: Equatable {
    enum Format: Equatable { case w3c, b3Single, b3Multi }
    /// 32 lowercase hex digits (a 64-bit B3 id left-padded with zeros, as W3C wants it).
    var traceID: String
    /// The B3 trace id was 64 bits: it goes back out in 16 digits.
    var shortTraceID = false
    /// The caller's span: 16 lowercase hex digits.
    var spanID: String
    /// The caller's decision; nil when it left the decision to the proxy (B3 with no
    /// sampling state).
    var sampled: Bool?
    var tracestate: String?
    /// Every format the request carried (a request through a proxy may carry B3 and the
    /// W3C field the proxy added): each goes back out.
    var formats: Set<Format>

    static let fields = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"]

    /// The context in `headers`, W3C first; nil when there is none or it is malformed
    /// (then the request starts a trace of its own, as the specifications say).
    static func parse(_ headers: HTTPHeaders) -> TraceContextIn? {
        // W3C's ids and decision first; B3 that came beside it goes back out too, with
        // the trace id as long as it came.
        var found = headers.first(name: "traceparent").flatMap { w3c($0, tracestate: headers.first(name: "tracestate")) }
        let b3s = [headers.first(name: "b3").flatMap(b3Single),
                   headers.first(name: "x-b3-traceid").flatMap { trace in
                       headers.first(name: "x-b3-spanid").flatMap { span in
                           b3Multi(trace: trace, span: span, sampled: headers.first(name: "x-b3-sampled"), flags: headers.first(name: "x-b3-flags"))
                       }
                   }].compactMap { $0 }
        for c in b3s {
            if found == nil {
                found = c
            } else {
                found!.formats.formUnion(c.formats)
                found!.shortTraceID = found!.shortTraceID || c.shortTraceID
            }
        }
        return found
    }

    /// `version-traceid-parentid-flags` (W3C Trace Context §3.2). A later version may add
    /// fields after the flags; version ff and all-zero ids are invalid.
    static func w3c(_ value: String, tracestate: String?) -> TraceContextIn? {
        let parts = value.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, isHex(parts[0]), parts[0] != "ff", parts[0] != "00" || parts.count == 4,
              parts[1].count == 32, isHex(parts[1]), !isZero(parts[1]),
              parts[2].count == 16, isHex(parts[2]), !isZero(parts[2]),
              parts[3].count == 2, isHex(parts[3]), let flags = UInt8(parts[3], radix: 16) else { return nil }
        return TraceContextIn(traceID: String(parts[1]), spanID: String(parts[2]), sampled: flags & 1 == 1,
                              tracestate: tracestate, formats: [.w3c])
    }

    /// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`; `b3: 0` alone is a
    /// decision with no context (nothing to join: the request starts its own trace).
    static func b3Single(_ value: String) -> TraceContextIn? {
        let parts = value.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 2, parts.count <= 4 else { return nil }
        var sampled: Bool?
        if parts.count >= 3 {
            switch parts[2] {
            case "1", "d": sampled = true
            case "0": sampled = false
            default: return nil
            }
        }
        if parts.count == 4, parts[3].count != 16 || !isHex(parts[3]) { return nil }
        return b3(trace: parts[0], span: parts[1], sampled: sampled, format: .b3Single)
    }

    static func b3Multi(trace: String, span: String, sampled: String?, flags: String?) -> TraceContextIn? {
        var decision: Bool?
        switch sampled?.lowercased() {
        case "1", "true": decision = true
        case "0", "false": decision = false
        case nil: decision = nil
        default: return nil
        }
        if flags == "1" { decision = true }  // debug
        return b3(trace: Substring(trace), span: Substring(span), sampled: decision, format: .b3Multi)
    }

    private static func b3(trace: Substring, span: Substring, sampled: Bool?, format: Format) -> TraceContextIn? {
        let trace = trace.lowercased(), span = span.lowercased()
        guard trace.count == 16 || trace.count == 32, isHex(Substring(trace)), !isZero(Substring(trace)),
              span.count == 16, isHex(Substring(span)), !isZero(Substring(span)) else { return nil }
        return TraceContextIn(traceID: trace.count == 16 ? String(repeating: "0", count: 16) + trace : trace,
                              shortTraceID: trace.count == 16, spanID: span, sampled: sampled, formats: [format])
    }

    private static func isHex(_ s: Substring) -> Bool {
        s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    private static func isZero(_ s: Substring) -> Bool { s.utf8.allSatisfy { $0 == 48 } }

    /// This context as a W3C traceparent, with `sampled` as the flag.
    func traceparent(sampled: Bool) -> String { "00-\(traceID)-\(spanID)-\(sampled ? "01" : "00")" }
}

/// One request's part in a trace: its span when sampled, and the fields the upstream
/// request carries (the proxy's span as the parent, in the format the request came in
/// and W3C's; or the decision not to sample, so the next hop follows it).
final class RequestTrace {
    private let span: (any Span)?
    /// Fields to replace the request's trace fields with upstream; empty: the received
    /// ones go on unchanged.
    let outgoing: [(String, String)]
    private var node = ""

    private init(span: (any Span)?, outgoing: [(String, String)]) {
        self.span = span
        self.outgoing = outgoing
    }

    /// Joins or starts the trace of a request with `headers`; `kind` is .client at the
    /// source agent and .server at the destination's; `policy` is what Telemetry
    /// resources say for the workload the agent acts for.
    static func begin(_ settings: TracingSettings, policy: TracingPolicy = TracingPolicy(), headers: HTTPHeaders, name: String,
                      kind: SpanKind, random: () -> UInt64) -> RequestTrace {
        let t = start(settings, policy: policy, headers: headers, name: name, kind: kind, random: random)
        t.node = settings.node
        return t
    }

    private static func start(_ settings: TracingSettings, policy: TracingPolicy, headers: HTTPHeaders, name: String, kind: SpanKind,
                              random: () -> UInt64) -> RequestTrace {
        let incoming = TraceContextIn.parse(headers)
        // B3's "do not sample" may come with no ids at all: followed, and passed on.
        if incoming == nil, headers.first(name: "b3") == "0" || headers.first(name: "x-b3-sampled") == "0" {
            return RequestTrace(span: nil, outgoing: [])
        }
        // A decision that came with the request is followed; otherwise the percentage.
        let percentage = policy.samplingPercentage ?? settings.samplingPercentage
        let sampled = incoming?.sampled ?? (Double(random() >> 11) / Double(1 << 53) * 100 < percentage)
        guard sampled, policy.reportSpans else {
            // No span here (not sampled, or Telemetry's disableSpanReporting). A decision
            // that came with the request goes on as it is; one made here travels with
            // the caller's ids (B3 that left it to us) or new ones, so every later hop
            // agrees. A new id has no span behind it; nothing is exported for it here.
            if let incoming {
                return RequestTrace(span: nil, outgoing: incoming.sampled == nil
                    ? fields(incoming, span: incoming.spanID, parent: nil, sampled: sampled) : [])
            }
            let ctx = TraceContextIn(traceID: hex(random(), random()), spanID: hex(random()), sampled: sampled, formats: [.w3c])
            return RequestTrace(span: nil, outgoing: [("traceparent", ctx.traceparent(sampled: sampled))])
        }
        var context = ServiceContext.topLevel
        if let incoming {
            // The tracer reads W3C: whatever format came in is handed to it as a sampled
            // W3C parent (the decision is made here).
            settings.tracer.extract(ParentCarrier(traceparent: incoming.traceparent(sampled: true), tracestate: incoming.tracestate),
                                    into: &context, using: ParentCarrier.Reader())
        }
        let span = settings.tracer.startSpan(name, context: context, ofKind: kind)
        var injected: [String: String] = [:]
        settings.tracer.inject(span.context, into: &injected, using: DictionaryWriter())
        guard let tp = injected["traceparent"], let mine = TraceContextIn.w3c(tp, tracestate: injected["tracestate"]) else {
            return RequestTrace(span: span, outgoing: [])
        }
        // The span's context in every format the request came with, and W3C's (what
        // the tracer itself speaks) in any case.
        let ctx = incoming.map { var c = $0; c.tracestate = mine.tracestate; return c } ?? mine
        return RequestTrace(span: span, outgoing: fields(ctx, span: mine.spanID, parent: incoming?.spanID, sampled: true, w3c: true))
    }

    /// The trace fields of `ctx`'s trace with `span` as the caller, in each of `ctx`'s
    /// formats (W3C's too when `w3c`).
    private static func fields(_ ctx: TraceContextIn, span: String, parent: String?, sampled: Bool, w3c: Bool = false) -> [(String, String)] {
        let trace = ctx.shortTraceID ? String(ctx.traceID.suffix(16)) : ctx.traceID
        var out: [(String, String)] = []
        if w3c || ctx.formats.contains(.w3c) {
            out.append(("traceparent", "00-\(ctx.traceID)-\(span)-\(sampled ? "01" : "00")"))
            if let ts = ctx.tracestate { out.append(("tracestate", ts)) }
        }
        if ctx.formats.contains(.b3Single) {
            out.append(("b3", "\(trace)-\(span)-\(sampled ? "1" : "0")" + (parent.map { "-\($0)" } ?? "")))
        }
        if ctx.formats.contains(.b3Multi) {
            out += [("x-b3-traceid", trace), ("x-b3-spanid", span), ("x-b3-sampled", sampled ? "1" : "0")]
            if let parent { out.append(("x-b3-parentspanid", parent)) }
        }
        return out
    }

    /// Ends the span with what happened to the request (Istio's span tags); `workload` is
    /// the one the proxy acted for (the client at the source, the server at the
    /// destination).
    func end(_ r: RequestRecord, workload: WorkloadEntry?, userAgent: String?) {
        guard let span else { return }
        span.updateAttributes { a in
            a["istio.canonical_service"] = IstioMetrics.canonicalService(workload)
            a["istio.canonical_revision"] = IstioMetrics.canonicalRevision(workload)
            a["istio.namespace"] = workload?.metadata.namespace ?? "unknown"
            a["node_id"] = node
            a["component"] = "proxy"
            a["http.method"] = r.method
            a["http.url"] = "http://\(r.authority)\(r.path)"
            a["http.protocol"] = r.protocolName == "gRPC" ? "HTTP/2" : r.protocolName
            a["http.status_code"] = r.status
            a["response_flags"] = r.flags.isEmpty ? "-" : r.flags.joined(separator: ",")
            a["request_size"] = r.requestBytes
            a["response_size"] = r.responseBytes
            a["upstream_cluster"] = r.cluster ?? "-"
            a["upstream_cluster.name"] = r.cluster ?? "-"
            a["peer.address"] = r.peers.client
            a["downstream_cluster"] = "-"
            if let ua = userAgent { a["user_agent"] = ua }
            if let id = r.requestID { a["guid:x-request-id"] = id }
            if let g = r.grpcStatus { a["grpc.status_code"] = g }
            if r.status >= 500 || r.status < 100 { a["error"] = true }
        }
        if r.status >= 500 || r.status < 100 { span.setStatus(SpanStatus(code: .error)) }
        span.end()
    }

    /// `n` 64-bit values as lowercase hex, 16 digits each.
    static func hex(_ values: UInt64...) -> String {
        values.map { v in
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }.joined()
    }
}

/// A W3C parent handed to the tracer's extractor.
private struct ParentCarrier {
    var traceparent: String
    var tracestate: String?

    struct Reader: Extractor {
        func extract(key: String, from carrier: ParentCarrier) -> String? {
            switch key {
            case "traceparent": return carrier.traceparent
            case "tracestate": return carrier.tracestate
            default: return nil
            }
        }
    }
}

/// What the tracer injects, collected to be written into the upstream head.
private struct DictionaryWriter: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key.lowercased()] = value
    }
}
