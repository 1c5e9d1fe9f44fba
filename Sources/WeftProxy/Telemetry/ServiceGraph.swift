import Foundation
import NIOConcurrencyHelpers

/// The service graph — workloads and services, and the requests between them — read off
/// the agent's own Istio metrics, as Kiali reads it off Prometheus: what `weft graph` and
/// the page on the metrics port show. Rates are over a window of recent samples of the
/// exposition, so the graph costs the proxy nothing per request.
public struct ServiceGraph: Codable, Sendable, Equatable {
    public struct Node: Codable, Sendable, Hashable {
        /// "workload", "service", or "unknown" (a client in no workload).
        public var kind: String
        /// NAMESPACE/NAME of a workload, the host of a service.
        public var name: String
        public var id: String { kind + ":" + name }
    }

    public struct Edge: Codable, Sendable, Equatable {
        public var source: String
        public var destination: String
        /// "http", "grpc" or "tcp".
        public var protocolName: String
        /// Requests (tcp: connections opened) per second over the window.
        public var rate: Double
        /// Share of the window's requests answered 5xx (or not at all); nil for tcp or
        /// with no request in the window.
        public var errorRate: Double?
        /// 99th percentile of the window's request durations (the histogram's buckets,
        /// interpolated as Prometheus' histogram_quantile does); nil as errorRate.
        public var p99Millis: Double?
        /// Every request of the edge went through the mTLS tunnel.
        public var mutualTLS: Bool
        /// Requests (connections) counted since the agent started.
        public var total: Double
    }

    /// Seconds the rates are over (0: one sample only so far, rates read 0).
    public var window: Double
    public var nodes: [Node]
    public var edges: [Edge]
}

/// One parsed scrape: per edge, the counters summed over its series.
struct GraphSample {
    struct Key: Hashable {
        var source: ServiceGraph.Node
        var destination: ServiceGraph.Node
        var protocolName: String
    }

    struct Totals {
        var requests = 0.0
        var errors = 0.0
        /// Upper bound → cumulative count.
        var buckets: [Double: Double] = [:]
        var mutualTLS = true
    }

    var time: Double
    var edges: [Key: Totals] = [:]

    /// Reads the Istio series of a Prometheus text exposition.
    init(exposition: String, time: Double) {
        self.time = time
        var series: [(String, [String: String], Double)] = []
        for line in exposition.split(separator: "\n") where line.hasPrefix("istio_") {
            if let parsed = PromText.parse(line) { series.append(parsed) }
        }
        // A request between two workloads of this node through its own tunnel is reported
        // twice by this one agent (reporter source and destination): count it once, as
        // the source saw it.
        func hop(_ l: [String: String]) -> [String?] {
            [l["source_workload"], l["source_workload_namespace"], l["destination_workload"], l["destination_workload_namespace"],
             l["destination_service"], l["request_protocol"]]
        }
        let seenBySource = Set(series.filter { $0.1["reporter"] == "source" }.map { hop($0.1) })
        for (name, labels, value) in series {
            if labels["reporter"] == "destination" && seenBySource.contains(hop(labels)) { continue }
            switch name {
            case "istio_requests_total":
                let code = labels["response_code"] ?? ""
                add(labels, proto: labels["request_protocol"] ?? "http") { t in
                    t.requests += value
                    if code.hasPrefix("5") || code == "0" || code == "other" { t.errors += value }
                }
            case "istio_request_duration_milliseconds_bucket":
                guard let le = labels["le"].flatMap({ $0 == "+Inf" ? Double.infinity : Double($0) }) else { continue }
                add(labels, proto: labels["request_protocol"] ?? "http", mtlsOnly: true) { $0.buckets[le, default: 0] += value }
            case "istio_tcp_connections_opened_total":
                add(labels, proto: "tcp") { $0.requests += value }
            default:
                continue
            }
        }
    }

    /// Adds to the edges a series stands for: client → service, and service → the
    /// workload that served it (when the reporter knows it).
    private mutating func add(_ labels: [String: String], proto: String, mtlsOnly: Bool = false, _ f: (inout Totals) -> Void) {
        func workload(_ side: String) -> ServiceGraph.Node? {
            guard let name = labels[side + "_workload"], name != "unknown" else { return nil }
            return ServiceGraph.Node(kind: "workload", name: "\(labels[side + "_workload_namespace"] ?? "unknown")/\(name)")
        }
        let service = ServiceGraph.Node(kind: "service", name: labels["destination_service"] ?? "unknown")
        let client = workload("source") ?? ServiceGraph.Node(kind: "unknown", name: "unknown")
        // The source knows the tunnel verified the destination; the destination knows
        // the connection was mTLS.
        let mtls = labels["reporter"] == "destination" ? labels["connection_security_policy"] == "mutual_tls"
            : (labels["destination_principal"] ?? "unknown") != "unknown"
        var keys = [Key(source: client, destination: service, protocolName: proto)]
        if let server = workload("destination") { keys.append(Key(source: service, destination: server, protocolName: proto)) }
        for k in keys {
            var t = edges[k] ?? Totals()
            f(&t)
            if !mtlsOnly { t.mutualTLS = t.mutualTLS && mtls }
            edges[k] = t
        }
    }
}

extension ServiceGraph {
    /// The graph of `now`, with rates against `then` (nil: no earlier sample).
    init(now: GraphSample, then: GraphSample?) {
        let window = then.map { now.time - $0.time } ?? 0
        var nodes = Set<Node>()
        var edges: [Edge] = []
        for (key, t) in now.edges where t.requests > 0 {
            nodes.insert(key.source)
            nodes.insert(key.destination)
            let before = then?.edges[key] ?? GraphSample.Totals()
            let requests = t.requests - before.requests
            let inWindow = window > 0 ? requests : 0
            var buckets = t.buckets
            for (le, n) in before.buckets { buckets[le, default: 0] -= n }
            edges.append(Edge(source: key.source.id, destination: key.destination.id, protocolName: key.protocolName,
                              rate: window > 0 ? requests / window : 0,
                              errorRate: key.protocolName == "tcp" || inWindow <= 0 ? nil : (t.errors - before.errors) / requests,
                              p99Millis: key.protocolName == "tcp" || inWindow <= 0 ? nil : Self.quantile(0.99, buckets),
                              mutualTLS: t.mutualTLS, total: t.requests))
        }
        self.init(window: window, nodes: nodes.sorted { $0.id < $1.id },
                  edges: edges.sorted { ($0.source, $0.destination, $0.protocolName) < ($1.source, $1.destination, $1.protocolName) })
    }

    /// `q` of a cumulative histogram (upper bound → count), interpolated linearly in
    /// the bucket it falls in; the last finite bound if it falls in +Inf's.
    static func quantile(_ q: Double, _ buckets: [Double: Double]) -> Double? {
        let sorted = buckets.sorted { $0.key < $1.key }
        guard let total = sorted.last?.value, total > 0 else { return nil }
        let rank = q * total
        var lower = 0.0, below = 0.0
        for (le, count) in sorted {
            if count >= rank {
                guard le.isFinite else { return lower }
                return count == below ? le : lower + (le - lower) * (rank - below) / (count - below)
            }
            lower = le.isFinite ? le : lower
            below = count
        }
        return lower
    }
}

/// Samples of the exposition kept for the graph's window: one every `interval`, for the
/// longest window asked.
public final class GraphRecorder: Sendable {
    public static let interval = 5.0
    public static let longest = 300.0
    private let samples = NIOLockedValueBox<[GraphSample]>([])
    private let exposition: @Sendable () -> String

    init(exposition: @escaping @Sendable () -> String) {
        self.exposition = exposition
    }

    /// Takes a sample (the metrics server's timer calls this every `interval`).
    func sample(now: Double = Date().timeIntervalSince1970) {
        let s = GraphSample(exposition: exposition(), time: now)
        samples.withLockedValue { all in
            all.append(s)
            all.removeAll { now - $0.time > Self.longest + Self.interval }
        }
    }

    /// The graph now, with rates over the last `window` seconds (as near as the samples
    /// allow).
    public func graph(window: Double, now: Double = Date().timeIntervalSince1970) -> ServiceGraph {
        let current = GraphSample(exposition: exposition(), time: now)
        let then = samples.withLockedValue { all in
            all.last { now - $0.time >= window } ?? all.first
        }
        return ServiceGraph(now: current, then: then.flatMap { now - $0.time > 0 ? $0 : nil })
    }
}

/// The Prometheus text format, one sample line: `name{label="value",…} value`.
enum PromText {
    static func parse(_ line: Substring) -> (String, [String: String], Double)? {
        let bytes = Array(line.utf8)
        var i = 0
        while i < bytes.count, bytes[i] != UInt8(ascii: "{"), bytes[i] != UInt8(ascii: " ") { i += 1 }
        let name = String(decoding: bytes[0..<i], as: UTF8.self)
        var labels: [String: String] = [:]
        if i < bytes.count, bytes[i] == UInt8(ascii: "{") {
            i += 1
            while i < bytes.count, bytes[i] != UInt8(ascii: "}") {
                let start = i
                while i < bytes.count, bytes[i] != UInt8(ascii: "=") { i += 1 }
                let key = String(decoding: bytes[start..<i], as: UTF8.self)
                i += 2  // ="
                guard i <= bytes.count else { return nil }
                var value = [UInt8]()
                while i < bytes.count, bytes[i] != UInt8(ascii: "\"") {
                    if bytes[i] == UInt8(ascii: "\\"), i + 1 < bytes.count {
                        i += 1
                        value.append(bytes[i] == UInt8(ascii: "n") ? 10 : bytes[i])
                    } else {
                        value.append(bytes[i])
                    }
                    i += 1
                }
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: ",") { i += 1 }
                labels[key] = String(decoding: value, as: UTF8.self)
            }
            i += 1
        }
        guard i < bytes.count, let v = Double(String(decoding: bytes[i...], as: UTF8.self).trimmingCharacters(in: .whitespaces)) else {
            return nil
        }
        return (name, labels, v)
    }
}
