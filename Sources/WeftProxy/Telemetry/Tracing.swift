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
    /// Their places in `fields`.
    enum Field: Int { case traceparent, tracestate, b3, traceID, spanID, parentSpanID, sampled, flags }

    /// The trace fields of a request head, read in one pass over it.
    struct Fields {
        /// Values of `TraceContextIn.fields`, by index (the first of each).
        var values = [String?](repeating: nil, count: TraceContextIn.fields.count)
        /// Some trace field is there (then what is sent on replaces them).
        var any = false

        init(_ headers: HTTPHeaders) {
            for (name, value) in headers {
                // Every trace field's name is 2 or 10–17 bytes: most fields are passed by
                // their length alone.
                let n = name.utf8.count
                guard n == 2 || (10...17).contains(n) else { continue }
                for (i, field) in TraceContextIn.fields.enumerated() where values[i] == nil && field.utf8.count == n {
                    if name.utf8.elementsEqual(field.utf8, by: { $0 | 0x20 == $1 }) {
                        values[i] = value
                        any = true
                    }
                }
            }
        }

        subscript(_ field: Field) -> String? { values[field.rawValue] }
    }

    /// The context in `headers`, W3C first; nil when there is none or it is malformed
    /// (then the request starts a trace of its own, as the specifications say).
    static func parse(_ headers: HTTPHeaders) -> TraceContextIn? { parse(Fields(headers)) }

    static func parse(_ f: Fields) -> TraceContextIn? {
        guard f.any else { return nil }
        // W3C's ids and decision first; B3 that came beside it goes back out too, with
        // the trace id as long as it came.
        var found = f[.traceparent].flatMap { w3c($0, tracestate: f[.tracestate]) }
        let b3s = [f[.b3].flatMap(b3Single),
                   f[.traceID].flatMap { trace in
                       f[.spanID].flatMap { span in b3Multi(trace: trace, span: span, sampled: f[.sampled], flags: f[.flags]) }
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
    /// The request came with trace fields (which `outgoing` then replaces).
    private(set) var receivedFields = false
    private var node = ""

    private init(span: (any Span)?, outgoing: [(String, String)]) {
        self.span = span
        self.outgoing = outgoing
    }

    /// Joins or starts the trace of a request with `headers`; `kind` is .client at the
    /// source agent and .server at the destination's; `policy` is what Telemetry
    /// resources say for the workload the agent acts for; `throughTunnel`: the request
    /// came from another agent. Nil when there is nothing to do: no span, and the
    /// request goes on as it came.
    static func begin(_ settings: TracingSettings, policy: TracingPolicy = TracingPolicy(), headers: HTTPHeaders,
                      name: @autoclosure () -> String, kind: SpanKind, throughTunnel: Bool = false, random: () -> UInt64) -> RequestTrace? {
        let fields = TraceContextIn.Fields(headers)
        let t = start(settings, policy: policy, fields: fields, name: name, kind: kind, throughTunnel: throughTunnel, random: random)
        guard t.span != nil || !t.outgoing.isEmpty else { return nil }
        t.node = settings.node
        t.receivedFields = fields.any
        return t
    }

    private static func start(_ settings: TracingSettings, policy: TracingPolicy, fields: TraceContextIn.Fields, name: () -> String,
                              kind: SpanKind, throughTunnel: Bool, random: () -> UInt64) -> RequestTrace {
        let incoming = TraceContextIn.parse(fields)
        // B3's "do not sample" may come with no ids at all: followed, and passed on.
        if incoming == nil, fields[.b3] == "0" || fields[.sampled] == "0" {
            return RequestTrace(span: nil, outgoing: [])
        }
        // A decision that came with the request is followed. A request from another
        // agent with no context was not sampled there: a source agent that samples sends
        // its context on, one that does not sends nothing (most requests, at Istio's 1 %:
        // adding a "not sampled" field to each would cost every one of them, over HTTP/2
        // mostly in HPACK's Huffman coding). Otherwise the percentage decides.
        let percentage = policy.samplingPercentage ?? settings.samplingPercentage
        let sampled = incoming?.sampled ?? (!throughTunnel && Double(random() >> 11) / Double(1 << 53) * 100 < percentage)
        guard sampled, policy.reportSpans else {
            // No span here (not sampled, or Telemetry's disableSpanReporting). A decision
            // that came with the request goes on as it is; one made here on the caller's
            // ids (B3 that left it to us) goes on with them; a new trace sampled with its
            // spans off travels with new ids (no span behind them), so later hops follow.
            if let incoming {
                return RequestTrace(span: nil, outgoing: incoming.sampled == nil
                    ? outgoingFields(incoming, span: incoming.spanID, parent: nil, sampled: sampled) : [])
            }
            return RequestTrace(span: nil, outgoing: sampled ? [("traceparent", traceparent(random(), random(), random(), sampled: true))] : [])
        }
        var context = ServiceContext.topLevel
        if let incoming {
            // The tracer reads W3C: whatever format came in is handed to it as a sampled
            // W3C parent (the decision is made here).
            settings.tracer.extract(ParentCarrier(traceparent: incoming.traceparent(sampled: true), tracestate: incoming.tracestate),
                                    into: &context, using: ParentCarrier.Reader())
        }
        let span = settings.tracer.startSpan(name(), context: context, ofKind: kind)
        var injected: [String: String] = [:]
        settings.tracer.inject(span.context, into: &injected, using: DictionaryWriter())
        guard let tp = injected["traceparent"], let mine = TraceContextIn.w3c(tp, tracestate: injected["tracestate"]) else {
            return RequestTrace(span: span, outgoing: [])
        }
        // The span's context in every format the request came with, and W3C's (what
        // the tracer itself speaks) in any case.
        let ctx = incoming.map { var c = $0; c.tracestate = mine.tracestate; return c } ?? mine
        return RequestTrace(span: span, outgoing: outgoingFields(ctx, span: mine.spanID, parent: incoming?.spanID, sampled: true, w3c: true))
    }

    /// The trace fields of `ctx`'s trace with `span` as the caller, in each of `ctx`'s
    /// formats (W3C's too when `w3c`).
    private static func outgoingFields(_ ctx: TraceContextIn, span: String, parent: String?, sampled: Bool, w3c: Bool = false) -> [(String, String)] {
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
    func end(_ r: RequestRecord, workload: WorkloadEntry?, headers: HTTPHeaders) {
        guard let span else { return }
        let userAgent = headers.first(name: "user-agent")
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

    /// A new W3C traceparent: trace id `hi``lo`, span id `span`. Written in place: one
    /// allocation (formatting the parts took a dozen, and most requests make one).
    static func traceparent(_ hi: UInt64, _ lo: UInt64, _ span: UInt64, sampled: Bool) -> String {
        String(unsafeUninitializedCapacity: 55) { out in
            // "00-" trace(32) "-" span(16) "-0" flag
            func hex(_ v: UInt64, at start: Int) {
                var v = v
                for i in stride(from: start + 15, through: start, by: -1) {
                    let nibble = UInt8(truncatingIfNeeded: v) & 0xf
                    out[i] = nibble &+ (nibble < 10 ? 48 : 87)
                    v >>= 4
                }
            }
            out[0] = 48; out[1] = 48; out[2] = 45
            hex(hi, at: 3); hex(lo, at: 19)
            out[35] = 45
            hex(span, at: 36)
            out[52] = 45; out[53] = 48; out[54] = sampled ? 49 : 48
            return 55
        }
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
