/// telemetry.istio.io Telemetry, its tracing part: how many requests start a trace and
/// whether spans are reported, for the workloads it selects (its selector), its namespace,
/// or the mesh (root namespace, no selector).
public struct Telemetry: Hashable, Sendable, Codable {
    public var metadata: Metadata
    /// spec.selector.matchLabels; nil: the whole namespace (or mesh).
    public var selector: Labels?
    public var tracing: [TracingRule]
    public var position: SourcePosition
}

/// One entry of Telemetry spec.tracing.
public struct TracingRule: Hashable, Sendable, Codable {
    /// match.mode: the client's side of a hop (the source agent's span), the server's
    /// (the destination agent's), or both (Istio's default).
    public var mode: TraceMode
    /// randomSamplingPercentage; nil: inherited.
    public var samplingPercentage: Double?
    /// disableSpanReporting; nil: inherited.
    public var disableSpanReporting: Bool?
}

public enum TraceMode: String, Hashable, Sendable, Codable {
    case client = "CLIENT"
    case server = "SERVER"
    case clientAndServer = "CLIENT_AND_SERVER"

    func covers(_ side: TraceMode) -> Bool { self == .clientAndServer || self == side }
}

/// What Telemetry resources say about tracing one side of a workload's requests, fields
/// unset where none says anything.
public struct TracingPolicy: Hashable, Sendable {
    /// Percent of requests with no sampling decision that start a sampled trace; nil: the
    /// agent's default (--tracing-sampling).
    public var samplingPercentage: Double?
    /// Spans are sent to the collector (disableSpanReporting: the decision still travels).
    public var reportSpans = true

    public init(samplingPercentage: Double? = nil, reportSpans: Bool = true) {
        self.samplingPercentage = samplingPercentage
        self.reportSpans = reportSpans
    }
}

extension Snapshot {
    /// Tracing for `side` (.client or .server) of `workload`'s requests, as Istio merges
    /// Telemetry: the mesh's (root namespace, no selector), then its namespace's, then
    /// the first by name selecting it; each field set by a narrower one wins. A request
    /// from no workload gets the mesh's.
    public func tracing(for workload: WorkloadEntry?, side: TraceMode) -> TracingPolicy {
        var layers = telemetries.filter { $0.metadata.namespace == rootNamespace && $0.selector == nil }
        if let w = workload {
            let ns = w.metadata.namespace
            if ns != rootNamespace { layers += telemetries.filter { $0.metadata.namespace == ns && $0.selector == nil } }
            if let own = telemetries.first(where: { t in
                t.metadata.namespace == ns && t.selector.map { sel in sel.allSatisfy { w.spec.labels[$0.key] == $0.value } } == true
            }) {
                layers.append(own)
            }
        }
        var policy = TracingPolicy()
        for t in layers {
            for rule in t.tracing where rule.mode.covers(side) {
                if let p = rule.samplingPercentage { policy.samplingPercentage = p }
                if let d = rule.disableSpanReporting { policy.reportSpans = !d }
            }
        }
        return policy
    }
}

extension ResourceDecoder {
    static let telemetryVersions = ["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"]

    static func decodeTelemetry(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> Telemetry? {
        let ctx = spec.ctx
        let selector = decodeSelector(spec)
        var rules: [TracingRule] = []
        var covered: [TraceMode: String] = [:]
        for entry in spec["tracing"]?.sequence() ?? [] {
            guard let m = entry.mapping() else { continue }
            var mode = TraceMode.clientAndServer
            if let match = m["match"]?.mapping() {
                if let node = match["mode"], let s = node.string() {
                    if let parsed = TraceMode(rawValue: s) {
                        mode = parsed
                    } else {
                        ctx.error("TEL001", node.node, "\(node.path) \"\(s)\" is not a mode (CLIENT, SERVER, CLIENT_AND_SERVER)")
                    }
                }
                match.finish(kind: "TracingSelector")
            }
            if let p = m["providers"] {
                ctx.error("TEL002", p.node, "\(p.path): weft has one tracing provider, the collector its agents send to (weft agent --tracing-endpoint); leave providers out")
            }
            let rule = TracingRule(mode: mode, samplingPercentage: m["randomSamplingPercentage"]?.percent(code: "TEL003"),
                                   disableSpanReporting: m["disableSpanReporting"]?.bool())
            m.finish(kind: "Tracing", istioFields: ["providers", "customTags", "useRequestIdForTraceSampling", "enableIstioTags"])
            let sides = [TraceMode.client, .server].filter { mode.covers($0) }
            if let again = sides.first(where: { covered[$0] != nil }) {
                ctx.error("TEL004", entry.node, "\(entry.path) configures \(again.rawValue) tracing again (\(covered[again]!) does already); one entry per side")
            }
            for side in sides where covered[side] == nil { covered[side] = entry.path }
            rules.append(rule)
        }
        spec.finish(kind: "Telemetry", istioFields: ["targetRef", "targetRefs", "metrics", "accessLogging"])
        return Telemetry(metadata: meta, selector: selector, tracing: rules, position: pos)
    }
}
