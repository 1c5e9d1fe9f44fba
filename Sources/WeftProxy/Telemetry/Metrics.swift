import Foundation
import NIOConcurrencyHelpers
import WeftConfig

/// Istio's standard metrics, same names, labels and buckets, so the dashboards and
/// queries operators already have work on weft unchanged. weft reports from the client
/// side of each hop (reporter="source"), as a sidecar on the caller would.
public final class IstioMetrics: Sendable {
    /// Istio's duration buckets (milliseconds).
    static let durationBuckets: [Double] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                                            1_800_000, 3_600_000]
    /// Istio's size buckets (bytes): 1, 10, … 10^9.
    static let sizeBuckets: [Double] = (0...9).map { pow(10, Double($0)) }

    struct Histogram {
        var counts: [UInt64]
        var sum = 0.0
        var count: UInt64 = 0

        init(buckets: Int) { counts = Array(repeating: 0, count: buckets) }

        mutating func observe(_ v: Double, _ bounds: [Double]) {
            for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
            sum += v
            count += 1
        }
    }

    struct HTTPSeries {
        var requests: UInt64 = 0
        var duration = Histogram(buckets: IstioMetrics.durationBuckets.count)
        var requestBytes = Histogram(buckets: IstioMetrics.sizeBuckets.count)
        var responseBytes = Histogram(buckets: IstioMetrics.sizeBuckets.count)

        mutating func record(_ r: RequestRecord) {
            requests += 1
            duration.observe(r.durationMillis, IstioMetrics.durationBuckets)
            requestBytes.observe(Double(r.requestBytes), IstioMetrics.sizeBuckets)
            responseBytes.observe(Double(r.responseBytes), IstioMetrics.sizeBuckets)
        }
    }

    struct TCPSeries {
        var opened: UInt64 = 0
        var closed: UInt64 = 0
        var sent: UInt64 = 0
        var received: UInt64 = 0
    }

    private struct State {
        var http: [[String]: HTTPSeries] = [:]
        var tcp: [[String]: TCPSeries] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Creates an empty registry.
    public init() {}

    static let peerLabels = ["reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
                             "destination_workload", "destination_workload_namespace", "destination_service",
                             "destination_service_name", "destination_service_namespace", "connection_security_policy"]
    static let httpLabels = peerLabels + ["request_protocol", "response_code", "grpc_response_status", "response_flags"]
    static let tcpLabels = peerLabels + ["response_flags"]

    /// Istio's values for the peer labels; "unknown" where nothing is known.
    static func peerValues(_ p: Peers, room: Int = 1) -> [String] {
        // The principal is known where it was verified: at the tunnel's destination end.
        // Like Istio, only the destination reports the connection's security policy.
        // One array, sized for the caller's labels too (a literal would be a second one).
        var values = [String]()
        values.reserveCapacity(peerLabels.count + room)
        values.append(p.reporter)
        values.append(p.source?.name ?? "unknown")
        values.append(p.source?.namespace ?? "unknown")
        values.append(p.sourcePrincipal.map { String($0.dropFirst("spiffe://".count)) } ?? "unknown")
        values.append(p.source?.name ?? "unknown")
        values.append(p.destinationWorkload?.name ?? "unknown")
        values.append(p.destinationWorkload?.namespace ?? "unknown")
        values.append(p.destinationHost)
        values.append(p.destinationService.name)
        values.append(p.destinationService.namespace)
        values.append(p.reporter == "destination" ? (p.mutualTLS ? "mutual_tls" : "none") : "unknown")
        return values
    }

    /// A response code as a label value: what an upstream sends is not ours to turn into
    /// any number of series, so a code outside HTTP's 100–599 is "other".
    static func label(status: Int) -> String { (100...599).contains(status) ? String(status) : "other" }

    /// A gRPC status as a label value: 0–16 (the codes gRPC defines), else "other".
    static func label(grpcStatus: Int) -> String { (0...16).contains(grpcStatus) ? String(grpcStatus) : "other" }

    /// Counts one proxy event.
    public func record(_ e: ProxyEvent) {
        switch e {
        case .request(let r):
            var key = Self.peerValues(r.peers, room: 4)
            key.append(r.protocolName == "gRPC" ? "grpc" : "http")
            key.append(Self.label(status: r.status))
            key.append(r.grpcStatus.map(Self.label(grpcStatus:)) ?? "")
            key.append(r.flags.isEmpty ? "-" : r.flags.count == 1 ? r.flags[0] : r.flags.joined(separator: ","))
            state.withLockedValue { s in
                // In place: a series copied out and back would copy its three histograms.
                s.http[key, default: HTTPSeries()].record(r)
            }
        case .tcpOpened(let t):
            var key = Self.peerValues(t.peers)
            key.append(t.flags.isEmpty ? "-" : t.flags.joined(separator: ","))
            state.withLockedValue { $0.tcp[key, default: TCPSeries()].opened += 1 }
        case .tcpClosed(let t):
            var key = Self.peerValues(t.peers)
            key.append(t.flags.isEmpty ? "-" : t.flags.joined(separator: ","))
            state.withLockedValue { s in
                var series = s.tcp[key] ?? TCPSeries()
                series.closed += 1
                series.sent += UInt64(t.sentBytes)
                series.received += UInt64(t.receivedBytes)
                s.tcp[key] = series
            }
        case .audit:
            break
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    public func render() -> String {
        let s = state.withLockedValue { $0 }
        var out = ""
        func labels(_ names: [String], _ values: [String], extra: String? = nil) -> String {
            var parts = zip(names, values).map { "\($0)=\"\(Self.escape($1))\"" }
            if let extra { parts.append(extra) }
            return "{" + parts.joined(separator: ",") + "}"
        }
        func bound(_ b: Double) -> String { b == b.rounded() ? String(Int64(b)) : String(b) }
        func histogram(_ name: String, _ help: String, _ bounds: [Double], _ pick: (HTTPSeries) -> Histogram) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for key in s.http.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                let h = pick(s.http[key]!)
                for (i, b) in bounds.enumerated() {
                    out += "\(name)_bucket\(labels(Self.httpLabels, key, extra: "le=\"\(bound(b))\"")) \(h.counts[i])\n"
                }
                out += "\(name)_bucket\(labels(Self.httpLabels, key, extra: "le=\"+Inf\"")) \(h.count)\n"
                out += "\(name)_sum\(labels(Self.httpLabels, key)) \(h.sum)\n"
                out += "\(name)_count\(labels(Self.httpLabels, key)) \(h.count)\n"
            }
        }
        out += "# HELP istio_requests_total Requests proxied.\n# TYPE istio_requests_total counter\n"
        for key in s.http.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            out += "istio_requests_total\(labels(Self.httpLabels, key)) \(s.http[key]!.requests)\n"
        }
        histogram("istio_request_duration_milliseconds", "Request duration.", Self.durationBuckets, \.duration)
        histogram("istio_request_bytes", "Request body sizes.", Self.sizeBuckets, \.requestBytes)
        histogram("istio_response_bytes", "Response body sizes.", Self.sizeBuckets, \.responseBytes)
        let tcp: [(String, String, (TCPSeries) -> UInt64)] = [
            ("istio_tcp_connections_opened_total", "TCP connections opened.", \.opened),
            ("istio_tcp_connections_closed_total", "TCP connections closed.", \.closed),
            ("istio_tcp_sent_bytes_total", "Bytes sent to the client on TCP connections.", \.sent),
            ("istio_tcp_received_bytes_total", "Bytes received from the client on TCP connections.", \.received),
        ]
        for (name, help, pick) in tcp {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
            for key in s.tcp.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                out += "\(name)\(labels(Self.tcpLabels, key)) \(pick(s.tcp[key]!))\n"
            }
        }
        return out
    }

    /// Label value escaping of the text format: backslash, quote, newline.
    static func escape(_ v: String) -> String {
        v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
