import WeftConfig

/// An address and port (a VIP:port the client dialed, or an endpoint).
public struct SocketKey: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    /// Creates a key.
    public init(_ address: IPAddress, _ port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `addr:port` (`[v6]:port`).
    public var description: String { address.withPort(port) }
}

/// How the proxy reaches an endpoint.
public enum EndpointTransport: Hashable, Sendable {
    /// Plain TCP: not a meshed workload, or DestinationRule tls DISABLE.
    case plain
    /// Through the mTLS tunnel to the agent of this node (a meshed workload).
    case tunnel(node: String)
    /// tls ISTIO_MUTUAL to an endpoint no agent serves: cannot be reached securely, and
    /// is not reached in plaintext either.
    case unreachable
}

/// One upstream endpoint of a cluster.
public struct Endpoint: Hashable, Sendable {
    public var socket: SocketKey
    public var weight: UInt32
    /// The WorkloadEntry behind it, if any (destination_workload in telemetry).
    public var workload: ResourceID?
    public var transport: EndpointTransport = .plain
    /// The workload's port is under PeerAuthentication STRICT: only the mTLS tunnel may
    /// reach it, never the proxy's own plaintext socket.
    public var requiresMutualTLS = false
}

/// A port of one of this node's workloads that the tunnel may deliver to.
public struct InboundTarget: Sendable {
    public var workload: WorkloadEntry
    /// SPIFFE URI of the workload (what it is called in policy and XFCC).
    public var identity: String
    /// The service port it serves behind (protocol, telemetry).
    public var listener: ServiceListener
    /// A cluster of one endpoint: the workload's port.
    public var cluster: Cluster
    /// The AuthorizationPolicies that apply to the workload.
    public var authorization: AuthorizationEngine
}

/// A concrete destination: service host, subset, service port.
public struct ClusterKey: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var subset: String?
    public var port: UInt16
    /// A local workload port the tunnel delivers to (Envoy's inbound clusters).
    public var inbound = false

    /// Envoy's cluster naming: `outbound|9080|v1|reviews.default.svc.cluster.local`,
    /// `inbound|9080||`.
    public var description: String { inbound ? "inbound|\(port)||" : "outbound|\(port)|\(subset ?? "")|\(host)" }
}

/// Endpoints of a cluster and the traffic policy that applies to them (DestinationRule
/// top level, overridden by the subset's, each overridden per port).
public final class Cluster: Sendable {
    public let key: ClusterKey
    public let endpoints: [Endpoint]
    public let loadBalancer: LoadBalancer
    public let connectionPool: ConnectionPool?
    public let outlierDetection: OutlierDetection?
    /// The service it belongs to (destination_service_name / namespace in telemetry).
    public let service: ResourceID
    /// What the proxy speaks to the endpoints: HTTP/2 (true), HTTP/1.1 (false), or
    /// what the client spoke (nil). See `upstreamHTTP2(_:pool:)`.
    public let upstreamHTTP2: Bool?
    /// Every endpoint is a meshed workload reached through the tunnel: requests to it can
    /// go as tunnel streams of their own (decided before an endpoint is picked).
    public let allMeshed: Bool

    /// A class, immutable once built: an exchange holds its cluster through every attempt,
    /// and copying the struct it was took a retain and a release of each of its fields at
    /// every step (~4k instructions per request, callgrind).
    public init(key: ClusterKey, endpoints: [Endpoint], loadBalancer: LoadBalancer, connectionPool: ConnectionPool?,
                outlierDetection: OutlierDetection?, service: ResourceID, upstreamHTTP2: Bool? = nil) {
        self.key = key
        self.endpoints = endpoints
        self.loadBalancer = loadBalancer
        self.connectionPool = connectionPool
        self.outlierDetection = outlierDetection
        self.service = service
        self.upstreamHTTP2 = upstreamHTTP2
        allMeshed = !endpoints.isEmpty && endpoints.allSatisfy { if case .tunnel = $0.transport { return true } else { return false } }
    }
}

/// What a captured connection to one VIP:port is: which service, which protocol, which
/// routes apply.
public struct ServiceListener: Sendable {
    public var service: ResourceID
    /// The service's first host (destination_service in telemetry, default route host).
    public var host: String
    public var port: ServicePort
    /// HTTP routes (nil: the port is not HTTP or no VirtualService has http routes).
    public var router: HTTPRouter?
    /// tcp routes of the VirtualService (empty: straight to the service's endpoints).
    public var tcpRoutes: [TCPRoute]
}

/// Everything the proxy needs from one snapshot, precomputed so a connection or a request
/// costs dictionary lookups only. Immutable; the agent swaps in a new one per revision.
public struct ProxyTables: Sendable {
    /// Captured VIP:port → listener. Only ports the kernel captures (Snapshot.needsProxy).
    public private(set) var listeners: [SocketKey: ServiceListener] = [:]
    /// Every port of every service, routed or not: a route may send anywhere.
    public private(set) var clusters: [ClusterKey: Cluster] = [:]
    /// Source workloads by cgroup id (who a captured client is).
    public var workloads: [UInt64: WorkloadEntry] = [:]
    /// host → its service's port numbers (to default a destination's port).
    private var ports: [String: [UInt16]] = [:]
    /// node → the identities of its workloads: what its agent may present in a tunnel.
    public private(set) var nodeIdentities: [String: Set<String>] = [:]
    /// This node's workloads by address (the tunnel presents the dialed one's certificate).
    public private(set) var localWorkloads: [IPAddress: WorkloadEntry] = [:]
    /// Every node's workloads by address (who a tunnel's Forwarded client is).
    public private(set) var workloadsByAddress: [IPAddress: WorkloadEntry] = [:]
    /// The mesh's trust domain.
    public private(set) var trustDomain = "cluster.local"
    /// This node's workload ports the tunnel may deliver to.
    public private(set) var inboundTargets: [SocketKey: InboundTarget] = [:]
    /// Telemetry's tracing of this node's workloads, by address: their requests out
    /// (.client) and in (.server).
    public private(set) var tracing: [IPAddress: (client: TracingPolicy, server: TracingPolicy)] = [:]
    /// The mesh's tracing, for a client that is no workload.
    public private(set) var meshTracing = TracingPolicy()
    /// Counts the tables the proxy switched to (ProxyRuntime.update): what was derived
    /// from an older one is stale.
    var generation: UInt64 = 0

    /// No services.
    public init() {}

    /// Builds the tables of `snapshot`; `workloads` maps cgroup ids of this node's
    /// workloads to their WorkloadEntry; `node` is this node, `trustDomain` the mesh's.
    public init(snapshot: Snapshot, workloads: [UInt64: WorkloadEntry] = [:], node: String = "", trustDomain: String = "cluster.local") {
        self.workloads = workloads
        self.trustDomain = trustDomain
        for we in snapshot.workloadEntries {
            guard let n = we.node else { continue }
            workloadsByAddress[we.spec.address] = we
            nodeIdentities[n, default: []].insert(we.identity(trustDomain: trustDomain))
            if n == node {
                localWorkloads[we.spec.address] = we
                tracing[we.spec.address] = (snapshot.tracing(for: we, side: .client), snapshot.tracing(for: we, side: .server))
            }
        }
        meshTracing = snapshot.tracing(for: nil, side: .client)
        for se in snapshot.serviceEntries where se.resolution != .none { // passthrough: never captured
            let dr = snapshot.destinationRule(for: se)
            let vs = snapshot.virtualService(for: se)
            let id = ResourceID(kind: "ServiceEntry", namespace: se.metadata.namespace, name: se.metadata.name)
            for port in se.ports where !port.isUDP {
                let backends = snapshot.backends(of: se, port: port)
                for host in se.hosts {
                    ports[host, default: []].append(port.number)
                    clusters[ClusterKey(host: host, subset: nil, port: port.number)] =
                        Self.cluster(host: host, subset: nil, port: port, backends: backends, dr: dr, service: id, snapshot: snapshot)
                    for subset in dr?.subsets ?? [] {
                        clusters[ClusterKey(host: host, subset: subset.name, port: port.number)] =
                            Self.cluster(host: host, subset: subset, port: port, backends: backends, dr: dr, service: id, snapshot: snapshot)
                    }
                }
                let listener = ServiceListener(service: id, host: se.hosts[0], port: port, router: nil, tcpRoutes: [])
                for b in backends {
                    guard let w = b.workload, node != "", b.node == node, let we = localWorkloads[b.address] else { continue }
                    let target = SocketKey(b.address, b.port)
                    // The first service that names a workload port decides its protocol.
                    if inboundTargets[target] != nil { continue }
                    let key = ClusterKey(host: "\(we.metadata.name).\(we.metadata.namespace)", subset: nil, port: b.port, inbound: true)
                    // Toward its own workload the agent speaks what the port says, as
                    // Istio's inbound clusters: HTTP/2 on HTTP2 and gRPC ports, else
                    // HTTP/1.1 (whatever the source agent sent through the tunnel).
                    let cluster = Cluster(key: key, endpoints: [Endpoint(socket: target, weight: 1, workload: w)], loadBalancer: .random,
                                          connectionPool: nil, outlierDetection: nil, service: id,
                                          upstreamHTTP2: port.speaksHTTP2)
                    inboundTargets[target] = InboundTarget(workload: we, identity: we.identity(trustDomain: trustDomain),
                                                           listener: listener, cluster: cluster,
                                                           authorization: AuthorizationEngine(snapshot: snapshot, workload: we))
                    clusters[key] = cluster
                }
                guard snapshot.needsProxy(se, port: port) else { continue }
                var routed = listener
                routed.router = port.isHTTP && vs.map { !$0.http.isEmpty } == true ? HTTPRouter(routes: vs!.http) : nil
                routed.tcpRoutes = vs?.tcp ?? []
                for vip in se.addresses { listeners[SocketKey(vip, port.number)] = routed }
            }
        }
    }

    static func cluster(host: String, subset: Subset?, port servicePort: ServicePort, backends: [ServiceBackend], dr: DestinationRule?,
                        service: ResourceID, snapshot: Snapshot) -> Cluster {
        let port = servicePort.number
        let selected = backends.filter { b in subset?.labels.allSatisfy { b.labels[$0.key] == $0.value } ?? true }
        let policies = [dr?.trafficPolicy, subset?.trafficPolicy].compactMap { $0 }
        // Later (more specific) wins, and a port-level setting beats its policy's own.
        func pick<T>(_ field: (TrafficPolicy) -> T?) -> T? {
            var value: T?
            for p in policies {
                if let v = field(p) { value = v }
                if let v = p.portLevelSettings[port].flatMap(field) { value = v }
            }
            return value
        }
        // Automatic mTLS: a meshed workload (bound to a node) is reached through its node's
        // agent unless the DestinationRule or the workload's PeerAuthentication says
        // DISABLE; ISTIO_MUTUAL in the DestinationRule insists on it.
        let tls = pick(\.tls), pool = pick(\.connectionPool)
        func strict(_ b: ServiceBackend) -> Bool {
            guard b.node != nil, let id = b.workload, case .workloadEntry(let we)? = snapshot.resources[id] else { return false }
            return snapshot.mtls(for: we, port: b.port).mode == .strict
        }
        func transport(_ b: ServiceBackend) -> EndpointTransport {
            if tls == .disable { return .plain }
            if let node = b.node, tls == .istioMutual || snapshot.acceptsMutualTLS(b) { return .tunnel(node: node) }
            return tls == .istioMutual ? .unreachable : .plain
        }
        return Cluster(key: ClusterKey(host: host, subset: subset?.name, port: port),
                       endpoints: selected.map { Endpoint(socket: SocketKey($0.address, $0.port), weight: $0.weight, workload: $0.workload,
                                                          transport: transport($0), requiresMutualTLS: strict($0)) },
                       loadBalancer: pick(\.loadBalancer) ?? .random,
                       connectionPool: pool, outlierDetection: pick(\.outlierDetection), service: service,
                       upstreamHTTP2: upstreamHTTP2(servicePort, pool: pool))
    }

    /// Istio's upstream protocol for a service port: HTTP/2 on HTTP2 and gRPC ports;
    /// HTTP/1.1 on an HTTP port, unless the DestinationRule sets useClientProtocol (the
    /// client's protocol; it overrides the upgrade policy) or h2UpgradePolicy UPGRADE.
    static func upstreamHTTP2(_ port: ServicePort, pool: ConnectionPool?) -> Bool? {
        if port.speaksHTTP2 { return true }
        if pool?.useClientProtocol == true { return nil }
        return pool?.h2Upgrade ?? false
    }

    /// The cluster a route destination means; the port defaults to the service's only
    /// port, else to the port the client dialed.
    public func cluster(for destination: Destination, dialedPort: UInt16) -> Cluster? {
        let port: UInt16
        if let p = destination.port {
            port = p
        } else if let only = ports[destination.host], only.count == 1 {
            port = only[0]
        } else {
            port = dialedPort
        }
        return clusters[ClusterKey(host: destination.host, subset: destination.subset, port: port)]
    }

    /// The default cluster of a listener (no route, or TCP without tcp routes).
    public func defaultCluster(_ l: ServiceListener) -> Cluster? {
        clusters[ClusterKey(host: l.host, subset: nil, port: l.port.number)]
    }

    /// The tcp route destination for a connection (first route whose match applies;
    /// weighted pick with `random` in [0, 1)), or nil for the default cluster.
    public func tcpDestination(_ l: ServiceListener, sourceLabels: Labels, random: Double) -> Destination? {
        for route in l.tcpRoutes {
            let applies = route.match.isEmpty || route.match.contains { m in
                (m.port == nil || m.port == l.port.number) && m.sourceLabels.allSatisfy { sourceLabels[$0.key] == $0.value }
            }
            guard applies else { continue }
            return pickWeighted(route.route, weight: \.weight, random: random)?.destination
        }
        return nil
    }
}

/// Istio's weighted choice among route destinations: a lone destination takes everything
/// whatever its weight; otherwise each gets weight/total of `random` in [0, 1).
func pickWeighted<T>(_ items: [T], weight: (T) -> Int?, random: Double) -> T? {
    pickWeightedIndex(items, weight: weight, random: random).map { items[$0] }
}

/// The index of the item `pickWeighted` picks.
func pickWeightedIndex<T>(_ items: [T], weight: (T) -> Int?, random: Double) -> Int? {
    if items.count == 1 { return 0 }
    let total = items.reduce(0) { $0 + (weight($1) ?? 0) }
    guard total > 0 else { return nil }
    var point = random * Double(total)
    for (i, d) in items.enumerated() where (weight(d) ?? 0) > 0 {
        point -= Double(weight(d)!)
        if point < 0 { return i }
    }
    return items.lastIndex { (weight($0) ?? 0) > 0 }
}
