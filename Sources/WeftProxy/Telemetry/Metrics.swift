import NIOConcurrencyHelpers
import Prometheus
import WeftConfig

/// Istio's standard metrics, same names, labels and buckets, so the dashboards and
/// queries operators already have work on weft unchanged. Each hop is reported by the
/// calling side's agent (reporter="source") and, through the tunnel or the inbound
/// listener, by the destination's (reporter="destination"), as Istio's two sidecars do.
///
/// The series live in the agent's one swift-prometheus registry. A series' handles are
/// looked up once per label set and kept: the registry's own lookup takes its lock and
/// builds its key from label pairs, which is more than a request should pay.
public final class IstioMetrics: Sendable {
    /// Istio's duration buckets (milliseconds).
    static let durationBuckets: [Double] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                                            1_800_000, 3_600_000]
    /// Istio's size buckets (bytes): 1, 10, … 10^9.
    static let sizeBuckets: [Double] = [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9]

    struct HTTPSeries {
        let requests: Counter
        let duration: ValueHistogram
        let requestBytes: ValueHistogram
        let responseBytes: ValueHistogram
    }

    struct TCPSeries {
        let opened: Counter
        let closed: Counter
        let sent: Counter
        let received: Counter
    }

    private struct State {
        var http: [[String]: HTTPSeries] = [:]
        var tcp: [[String]: TCPSeries] = [:]
    }

    private let state = NIOLockedValueBox(State())
    /// Where the series are registered (the agent's one registry).
    public let registry: PrometheusCollectorRegistry

    /// Series go into `registry`.
    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    /// Istio's peer labels (istio_requests_total and istio_tcp_*), in Istio's order.
    static let peerLabels = ["reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
                             "source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
                             "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
                             "destination_version", "destination_service", "destination_canonical_service",
                             "destination_canonical_revision", "destination_service_name", "destination_service_namespace",
                             "destination_cluster", "request_protocol"]
    static let httpLabels = peerLabels + ["response_code", "grpc_response_status", "response_flags", "connection_security_policy"]
    static let tcpLabels = peerLabels + ["response_flags", "connection_security_policy"]

    /// A workload's canonical service and revision as Istio derives them: its own labels,
    /// then Kubernetes' recommended ones, then app / version, then the name / "latest".
    static func canonicalService(_ w: WorkloadEntry?) -> String {
        guard let w else { return "unknown" }
        let l = w.spec.labels
        return l["service.istio.io/canonical-name"] ?? l["app.kubernetes.io/name"] ?? l["app"] ?? w.metadata.name
    }

    static func canonicalRevision(_ w: WorkloadEntry?) -> String {
        guard let w else { return "unknown" }
        let l = w.spec.labels
        return l["service.istio.io/canonical-revision"] ?? l["app.kubernetes.io/version"] ?? l["version"] ?? "latest"
    }

    /// The peer label values of `p` (peerLabels' order), sized for `room` more.
    static func peerValues(_ p: Peers, protocolName: String, room: Int) -> [String] {
        var values = [String]()
        values.reserveCapacity(peerLabels.count + room)
        values.append(p.reporter)
        values.append(p.source?.metadata.name ?? "unknown")
        values.append(canonicalService(p.source))
        values.append(canonicalRevision(p.source))
        values.append(p.source?.metadata.namespace ?? "unknown")
        values.append(p.sourcePrincipal ?? "unknown")
        values.append(p.source?.spec.labels["app"] ?? "unknown")
        values.append(p.source?.spec.labels["version"] ?? "unknown")
        // Cluster: weft has no cluster names (Istio's multi-cluster label).
        values.append("unknown")
        let d = p.destinationWorkload
        values.append(d?.metadata.name ?? "unknown")
        values.append(d?.metadata.namespace ?? "unknown")
        values.append(p.destinationPrincipal ?? "unknown")
        values.append(d?.spec.labels["app"] ?? "unknown")
        values.append(d?.spec.labels["version"] ?? "unknown")
        values.append(p.destinationHost)
        values.append(canonicalService(d))
        values.append(canonicalRevision(d))
        values.append(p.destinationService.name)
        values.append(p.destinationService.namespace)
        values.append("unknown")
        values.append(protocolName)
        return values
    }

    /// Like Istio, only the destination knows (and reports) whether the connection was mTLS.
    static func securityPolicy(_ p: Peers) -> String {
        p.reporter == "destination" ? (p.mutualTLS ? "mutual_tls" : "none") : "unknown"
    }

    /// A response code as a label value: what an upstream sends is not ours to turn into
    /// any number of series, so a code outside HTTP's 100–599 is "other".
    static func label(status: Int) -> String { (100...599).contains(status) ? String(status) : "other" }

    /// A gRPC status as a label value: 0–16 (the codes gRPC defines), else "other".
    static func label(grpcStatus: Int) -> String { (0...16).contains(grpcStatus) ? String(grpcStatus) : "other" }

    static func flagsValue(_ flags: [String]) -> String {
        flags.isEmpty ? "-" : flags.count == 1 ? flags[0] : flags.joined(separator: ",")
    }

    /// Counts one proxy event.
    public func record(_ e: ProxyEvent) {
        switch e {
        case .request(let r):
            let memoKey = r.peers.memo.map { _ in SeriesMemo.Key(protocolName: r.protocolName, status: r.status, grpcStatus: r.grpcStatus, flags: r.flags) }
            let s = memoKey.flatMap { r.peers.memo?.find($0) } ?? httpSeries(r, memoKey: memoKey)
            s.requests.increment()
            s.duration.record(r.durationMillis)
            s.requestBytes.record(Double(r.requestBytes))
            s.responseBytes.record(Double(r.responseBytes))
        case .tcpOpened(let t):
            tcpSeries(t).opened.increment()
        case .tcpClosed(let t):
            let s = tcpSeries(t)
            s.closed.increment()
            s.sent.increment(by: Int64(t.sentBytes))
            s.received.increment(by: Int64(t.receivedBytes))
        case .audit:
            break
        }
    }

    private func httpSeries(_ r: RequestRecord, memoKey: SeriesMemo.Key?) -> HTTPSeries {
        var key = Self.peerValues(r.peers, protocolName: r.protocolName == "gRPC" ? "grpc" : "http", room: 4)
        key.append(Self.label(status: r.status))
        key.append(r.grpcStatus.map(Self.label(grpcStatus:)) ?? "")
        key.append(Self.flagsValue(r.flags))
        key.append(Self.securityPolicy(r.peers))
        let series = state.withLockedValue { s in
            if let found = s.http[key] { return found }
            let made = makeHTTPSeries(key)
            s.http[key] = made
            return made
        }
        if let memoKey { r.peers.memo?.keep(memoKey, series) }
        return series
    }

    private func tcpSeries(_ t: TCPRecord) -> TCPSeries {
        var key = Self.peerValues(t.peers, protocolName: "tcp", room: 2)
        key.append(Self.flagsValue(t.flags))
        key.append(Self.securityPolicy(t.peers))
        return state.withLockedValue { s in
            if let found = s.tcp[key] { return found }
            let labels = Array(zip(Self.tcpLabels, key))
            let made = TCPSeries(
                opened: registry.makeCounter(name: "istio_tcp_connections_opened_total", labels: labels, help: "TCP connections opened."),
                closed: registry.makeCounter(name: "istio_tcp_connections_closed_total", labels: labels, help: "TCP connections closed."),
                sent: registry.makeCounter(name: "istio_tcp_sent_bytes_total", labels: labels,
                                           help: "Bytes sent to the client on TCP connections."),
                received: registry.makeCounter(name: "istio_tcp_received_bytes_total", labels: labels,
                                               help: "Bytes received from the client on TCP connections."))
            s.tcp[key] = made
            return made
        }
    }

    private func makeHTTPSeries(_ key: [String]) -> HTTPSeries {
        let labels = Array(zip(Self.httpLabels, key))
        return HTTPSeries(
            requests: registry.makeCounter(name: "istio_requests_total", labels: labels, help: "Requests proxied."),
            duration: registry.makeValueHistogram(name: "istio_request_duration_milliseconds", labels: labels,
                                                  buckets: Self.durationBuckets, help: "Request duration."),
            requestBytes: registry.makeValueHistogram(name: "istio_request_bytes", labels: labels, buckets: Self.sizeBuckets,
                                                      help: "Request body sizes."),
            responseBytes: registry.makeValueHistogram(name: "istio_response_bytes", labels: labels, buckets: Self.sizeBuckets,
                                                       help: "Response body sizes."))
    }
}
