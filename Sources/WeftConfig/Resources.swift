/// Identity of a resource: kind, namespace, name.
public struct ResourceID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Resource kind (ServiceEntry, …).
    public var kind: String
    /// metadata.namespace (default "default").
    public var namespace: String
    /// metadata.name.
    public var name: String

    /// Creates an id.
    public init(kind: String, namespace: String, name: String) {
        self.kind = kind
        self.namespace = namespace
        self.name = name
    }

    /// `Kind ns/name`.
    public var description: String { "\(kind) \(namespace)/\(name)" }

    public static func < (a: ResourceID, b: ResourceID) -> Bool {
        (a.kind, a.namespace, a.name) < (b.kind, b.namespace, b.name)
    }
}

/// The metadata weft reads.
public struct Metadata: Hashable, Sendable, Codable {
    /// metadata.name.
    public var name: String
    /// metadata.namespace.
    public var namespace: String
    /// metadata.labels.
    public var labels: [String: String] = [:]
    /// metadata.annotations.
    public var annotations: [String: String] = [:]
}

/// One port of a ServiceEntry.
public struct ServicePort: Hashable, Sendable, Codable {
    /// Service port number.
    public var number: UInt16
    /// Port name (endpoints map their ports by it).
    public var name: String
    /// Protocol as written (HTTP, TCP, UDP, …).
    public var protocolName: String
    /// Default endpoint port when an endpoint does not name one.
    public var targetPort: UInt16?

    /// Whether the kernel balances this port as UDP (else TCP).
    public var isUDP: Bool { protocolName == "UDP" }
}

/// A workload's address and ports: WorkloadEntry.spec, or an inline ServiceEntry endpoint.
public struct WorkloadSpec: Hashable, Sendable, Codable {
    /// IP address.
    public var address: IPAddress
    /// Port name → port number on this workload.
    public var ports: [String: UInt16] = [:]
    /// Labels (matched by workloadSelector and, later, subsets).
    public var labels: [String: String] = [:]
    /// Load-balancing weight, ≥ 1 (1 when unset).
    public var weight: UInt32 = 1
    /// Service account (identity), if set.
    public var serviceAccount: String?
}

/// An endpoint of a ServiceEntry named by a DNS name (resolution DNS or DNS_ROUND_ROBIN):
/// its addresses are what the agent resolves the name to, each with these ports, labels
/// and weight.
public struct NamedEndpoint: Hashable, Sendable, Codable {
    /// The DNS name, lowercase, without a trailing dot.
    public var name: String
    /// Port name → port number.
    public var ports: [String: UInt16] = [:]
    /// Labels (subsets select on them).
    public var labels: [String: String] = [:]
    /// Load-balancing weight of each of its addresses.
    public var weight: UInt32 = 1
}

/// Istio's ServiceEntry.resolution: how a service's endpoints are found.
public enum Resolution: String, Hashable, Sendable, Codable, CaseIterable {
    /// Endpoints (or selected WorkloadEntries) by address.
    case `static` = "STATIC"
    /// No endpoints: a connection goes to the address it was made to (passthrough);
    /// the service only registers its addresses (REGISTRY_ONLY) and names.
    case none = "NONE"
    /// Endpoint names (or the hosts) resolved by the agent; every address is a backend.
    case dns = "DNS"
    /// As DNS, but only the first address of each answer (Envoy's LOGICAL_DNS).
    case dnsRoundRobin = "DNS_ROUND_ROBIN"

    /// Whether the agent resolves names for it.
    public var resolves: Bool { self == .dns || self == .dnsRoundRobin }
}

/// Istio's ServiceEntry.location.
public enum Location: String, Hashable, Sendable, Codable, CaseIterable {
    case meshInternal = "MESH_INTERNAL"
    /// Outside the mesh: its endpoints are never weft workloads (no mTLS to them).
    case meshExternal = "MESH_EXTERNAL"
}

/// networking.istio.io ServiceEntry.
public struct ServiceEntry: Hashable, Sendable, Codable {
    /// Metadata.
    public var metadata: Metadata
    /// Host names, fully qualified (short names expanded against the namespace).
    public var hosts: [String]
    /// Virtual IPs.
    public var addresses: [IPAddress]
    /// Ports.
    public var ports: [ServicePort]
    /// Inline endpoints (exclusive with workloadSelector).
    public var endpoints: [WorkloadSpec]
    /// Labels that select WorkloadEntries of the same namespace.
    public var workloadSelector: [String: String]?
    /// Where the resource starts.
    public var position: SourcePosition
    /// How its endpoints are found.
    public var resolution: Resolution = .static
    /// Inside or outside the mesh.
    public var location: Location = .meshInternal
    /// Endpoints by DNS name (resolution DNS / DNS_ROUND_ROBIN; with no endpoints at all,
    /// its hosts).
    public var namedEndpoints: [NamedEndpoint] = []
}

/// networking.istio.io WorkloadEntry with weft's node/cgroup annotations.
public struct WorkloadEntry: Hashable, Sendable, Codable {
    /// Metadata.
    public var metadata: Metadata
    /// The workload.
    public var spec: WorkloadSpec
    /// `weft.io/node`: the node the workload runs on.
    public var node: String?
    /// `weft.io/cgroup`: its cgroup, relative to the agent's --cgroup.
    public var cgroup: String?
    /// Where the resource starts.
    public var position: SourcePosition
}

/// DestinationRule loadBalancer settings weft enforces in the kernel.
public enum LoadBalancer: Hashable, Sendable, Codable {
    /// Weighted random (Istio's `simple: RANDOM`, and weft's default).
    case random
    /// Weighted round robin.
    case roundRobin
    /// Maglev consistent hashing on the client address.
    case maglev(tableSize: Int)
    /// Envoy's LEAST_REQUEST: of two random endpoints, the one with fewer requests in
    /// flight (weighted). Needs the proxy.
    case leastRequest
    /// Consistent hashing on a request attribute (header, cookie, query parameter).
    /// Needs the proxy.
    case requestHash(HashKey)

    /// What a request-level consistent hash hashes.
    public enum HashKey: Hashable, Sendable, Codable {
        case header(String)
        /// Cookie name; with a ttl the proxy sets the cookie when the client has none
        /// (Envoy's behaviour), so the client sticks from its next request on.
        case cookie(name: String, ttl: IstioDuration?, path: String?)
        case queryParameter(String)
    }

    /// Whether only the L7 proxy can apply it (the kernel balances connections, not requests).
    public var needsProxy: Bool {
        switch self {
        case .leastRequest, .requestHash: return true
        default: return false
        }
    }

    /// Cilium's default Maglev table size (a prime).
    public static let defaultMaglevTableSize = 16381
    /// Largest table weft supports (Istio allows < 5000011; weft's tables live in kernel
    /// memory per service, so it stops at Cilium's largest supported prime).
    public static let maxMaglevTableSize = 131071
}

/// connectionPool settings (enforced by the L7 proxy).
public struct ConnectionPool: Hashable, Sendable, Codable {
    public var maxConnections: Int?
    public var connectTimeout: IstioDuration?
    public var http1MaxPendingRequests: Int?
    public var http2MaxRequests: Int?
    public var maxRequestsPerConnection: Int?
    public var maxRetries: Int?
    public var idleTimeout: IstioDuration?
    /// http.h2UpgradePolicy: UPGRADE speaks HTTP/2 to the endpoints of an HTTP port.
    public var h2Upgrade: Bool?
    /// http.useClientProtocol: speak to the endpoints what the client spoke.
    public var useClientProtocol: Bool?
}

/// outlierDetection settings (enforced by the L7 proxy).
public struct OutlierDetection: Hashable, Sendable, Codable {
    public var consecutive5xxErrors: Int?
    /// Also set by the deprecated `consecutiveErrors` (which counted 502/503/504).
    public var consecutiveGatewayErrors: Int?
    public var interval: IstioDuration?
    public var baseEjectionTime: IstioDuration?
    public var maxEjectionPercent: Int?

    public init(consecutive5xxErrors: Int? = nil, consecutiveGatewayErrors: Int? = nil, interval: IstioDuration? = nil,
                baseEjectionTime: IstioDuration? = nil, maxEjectionPercent: Int? = nil) {
        self.consecutive5xxErrors = consecutive5xxErrors
        self.consecutiveGatewayErrors = consecutiveGatewayErrors
        self.interval = interval
        self.baseEjectionTime = baseEjectionTime
        self.maxEjectionPercent = maxEjectionPercent
    }
}

/// trafficPolicy.tls.mode values weft implements.
public enum ClientTLSMode: String, Hashable, Sendable, Codable {
    case disable = "DISABLE"
    case istioMutual = "ISTIO_MUTUAL"
}

/// A traffic policy (top level, per port, or per subset).
public struct TrafficPolicy: Hashable, Sendable, Codable {
    public var loadBalancer: LoadBalancer?
    public var connectionPool: ConnectionPool?
    public var outlierDetection: OutlierDetection?
    public var tls: ClientTLSMode?
    /// Overrides by destination port.
    public var portLevelSettings: [UInt16: TrafficPolicy] = [:]
}

/// A named subset of a service's endpoints.
public struct Subset: Hashable, Sendable, Codable {
    public var name: String
    public var labels: Labels
    public var trafficPolicy: TrafficPolicy?
}

/// networking.istio.io DestinationRule.
public struct DestinationRule: Hashable, Sendable, Codable {
    /// Metadata.
    public var metadata: Metadata
    /// Host, fully qualified (or a `*.` wildcard).
    public var host: String
    /// spec.trafficPolicy.
    public var trafficPolicy: TrafficPolicy?
    /// spec.subsets.
    public var subsets: [Subset] = []
    /// Where the resource starts.
    public var position: SourcePosition

    /// trafficPolicy.loadBalancer (the part the kernel enforces).
    public var loadBalancer: LoadBalancer? { trafficPolicy?.loadBalancer }
}

/// Host name handling the way Istio does it.
public enum HostName {
    /// `reviews` in namespace `default` → `reviews.default.svc.cluster.local`; names with a
    /// dot (and wildcards) are already qualified.
    public static func qualify(_ host: String, namespace: String) -> String {
        host.contains(".") || host == "*" ? host : "\(host).\(namespace).svc.cluster.local"
    }

    /// `text` as a DNS name to resolve — lowercase, without the trailing dot — or nil if
    /// it is not one (labels of 1–63 letters, digits, '-' or '_', not starting or ending
    /// with '-'; at most 253 characters).
    public static func dnsName(_ text: String) -> String? {
        var t = text.lowercased()
        if t.hasSuffix(".") { t.removeLast() }
        guard !t.isEmpty, t.utf8.count <= 253 else { return nil }
        for label in t.split(separator: ".", omittingEmptySubsequences: false) {
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-",
                  label.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" })
            else { return nil }
        }
        return t
    }

    /// Whether a DestinationRule host (possibly `*.suffix`) covers a service host.
    public static func matches(pattern: String, host: String) -> Bool {
        if pattern == "*" { return true }
        if pattern.hasPrefix("*.") { return host.hasSuffix(String(pattern.dropFirst())) }
        return pattern == host
    }
}
