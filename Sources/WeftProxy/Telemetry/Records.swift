import Foundation
import WeftConfig

/// Who talked to whom: what every telemetry record is labelled with. The source is the
/// client's WorkloadEntry as the kernel identified it by cgroup, never a header.
public struct Peers: Sendable {
    /// Client address:port as the proxy saw it.
    public var client: String
    /// The client's WorkloadEntry, if its cgroup belongs to one.
    public var source: ResourceID?
    /// The service host the client addressed.
    public var destinationHost: String
    /// The ServiceEntry behind that host.
    public var destinationService: ResourceID
    /// The WorkloadEntry behind the endpoint that served it, if any.
    public var destinationWorkload: ResourceID?
    /// "source" (the calling side's agent) or "destination" (the tunnel's far end).
    public var reporter = "source"
    /// The client's verified SPIFFE identity (destination side of the tunnel).
    public var sourcePrincipal: String?
    /// The connection arrived over mTLS (destination side).
    public var mutualTLS = false
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
