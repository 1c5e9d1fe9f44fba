import Foundation
import NIOConcurrencyHelpers
import WeftConfig

/// Who talked to whom: what every telemetry record is labelled with. The source is the
/// client's WorkloadEntry as the kernel identified it by cgroup, never a header.
public struct Peers: Sendable {
    /// Client address:port as the proxy saw it.
    public var client: String
    /// The client's WorkloadEntry, if its cgroup belongs to one (or, at a tunnel's
    /// destination, the one the source agent vouched for).
    public var source: WorkloadEntry?
    /// The service host the client addressed.
    public var destinationHost: String
    /// The ServiceEntry behind that host.
    public var destinationService: ResourceID
    /// The WorkloadEntry behind the endpoint that served it, if any.
    public var destinationWorkload: WorkloadEntry?
    /// "source" (the calling side's agent) or "destination" (the tunnel's far end).
    public var reporter = "source"
    /// The client's SPIFFE identity: its own at the source, the verified one at the
    /// tunnel's destination.
    public var sourcePrincipal: String?
    /// The serving workload's SPIFFE identity where mTLS carried the request: the one the
    /// tunnel verified at the source, its own at the destination.
    public var destinationPrincipal: String?
    /// The connection arrived over mTLS (destination side).
    public var mutualTLS = false
    /// The series this connection's requests to this endpoint were counted in.
    public var memo: SeriesMemo?
}

/// The metric series one connection's requests to one endpoint were counted in, by what
/// still varies between them (protocol, status, flags): a keep-alive connection's
/// requests then find their series without hashing Istio's ~25 label values each time.
/// Touched from the connection's event loop; the lock is for Sendable, uncontended.
public final class SeriesMemo: @unchecked Sendable {
    struct Key: Hashable {
        var protocolName: String
        var status: Int
        var grpcStatus: Int?
        var flags: [String]
    }

    /// A connection with more kinds of outcome than this is a strange one: the rest go
    /// through the registry-wide lookup, not into an ever larger memo.
    static let limit = 32
    private let lock = NIOLock()
    private var http: [Key: IstioMetrics.HTTPSeries] = [:]

    public init() {}

    func find(_ key: Key) -> IstioMetrics.HTTPSeries? { lock.withLock { http[key] } }

    func keep(_ key: Key, _ series: IstioMetrics.HTTPSeries) {
        lock.withLock { if http.count < Self.limit { http[key] = series } }
    }
}

/// What happened to one HTTP request.
public struct RequestRecord: Sendable {
    public var start: Date
    public var peers: Peers
    public var method: String
    public var path: String
    public var authority: String
    /// "HTTP/1.1", "HTTP/2" or "gRPC".
    public var protocolName: String
    public var status: Int
    public var grpcStatus: Int?
    /// Envoy response flags (UF, UO, URX, UT, NR, DI, FI, DPE…).
    public var flags: [String]
    public var durationMillis: Double
    public var requestBytes: Int
    public var responseBytes: Int
    public var upstream: String?
    public var attempts: Int
    public var requestID: String?
    public var route: String?
    public var cluster: String?
}

extension RequestRecord {
    /// A request the proxy refused before it was parsed or routed (Envoy's flag DPE).
    static func refused(_ peers: Peers, protocolName: String, status: Int) -> RequestRecord {
        RequestRecord(start: Date(), peers: peers, method: "-", path: "-", authority: "-", protocolName: protocolName, status: status,
                      grpcStatus: nil, flags: ["DPE"], durationMillis: 0, requestBytes: 0, responseBytes: 0, upstream: nil,
                      attempts: 0, requestID: nil, route: nil, cluster: nil)
    }
}

/// One opaque TCP connection.
public struct TCPRecord: Sendable {
    public var peers: Peers
    public var upstream: String?
    /// Bytes sent to the client (what the upstream sent) and received from it.
    public var sentBytes: Int
    public var receivedBytes: Int
    public var flags: [String]
}

/// What the proxy reports to telemetry and the access log.
public enum ProxyEvent: Sendable {
    case request(RequestRecord)
    case tcpOpened(TCPRecord)
    case tcpClosed(TCPRecord)
    /// An AUDIT AuthorizationPolicy matched (logged by the agent; it decides nothing).
    case audit(AuthzDecision, request: String, peer: String?)
}
