import CWeftABI
import WeftConfig

/// L4 protocol of a frontend.
public enum L4Protocol: UInt8, Sendable, Codable, Comparable {
    case tcp = 6
    case udp = 17

    public static func < (a: L4Protocol, b: L4Protocol) -> Bool { a.rawValue < b.rawValue }

    /// "tcp" / "udp".
    public var name: String { self == .tcp ? "tcp" : "udp" }
}

/// A service frontend: VIP, port, protocol (the key of weft_svc_v1).
public struct Frontend: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Virtual IP.
    public var address: IPAddress
    /// Port.
    public var port: UInt16
    /// TCP or UDP.
    public var proto: L4Protocol

    /// Creates a frontend.
    public init(address: IPAddress, port: UInt16, proto: L4Protocol) {
        self.address = address
        self.port = port
        self.proto = proto
    }

    /// `10.96.0.20:9080/tcp`.
    public var description: String { "\(address.withPort(port))/\(proto.name)" }

    public static func < (a: Frontend, b: Frontend) -> Bool {
        (a.address, a.port, a.proto) < (b.address, b.port, b.proto)
    }
}

/// A backend address (the identity of a weft_backend_v1 entry).
public struct BackendAddress: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// IP.
    public var address: IPAddress
    /// Port.
    public var port: UInt16

    /// Creates a backend address.
    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `addr:port`.
    public var description: String { address.withPort(port) }

    public static func < (a: BackendAddress, b: BackendAddress) -> Bool { (a.address, a.port) < (b.address, b.port) }
}

/// What the kernel recorded about a connection it sent to the agent's proxy.
public struct CapturedOrigin: Sendable, Equatable, CustomStringConvertible {
    /// The VIP and port the client dialed.
    public var destination: BackendAddress
    /// The cgroup of the process that called connect(): who the client is.
    public var cgroupID: UInt64

    /// Creates an origin.
    public init(destination: BackendAddress, cgroupID: UInt64) {
        self.destination = destination
        self.cgroupID = cgroupID
    }

    /// `VIP:port from cgroup N`.
    public var description: String { "\(destination) from cgroup \(cgroupID)" }
}

/// What one frontend should look like in the kernel.
public struct DesiredService: Hashable, Sendable {
    /// The frontend.
    public var frontend: Frontend
    /// `namespace/name` of the ServiceEntry (for inspection and logs).
    public var service: String
    /// Algorithm.
    public var loadBalancer: LoadBalancer
    /// Backends (sorted, unique) and their weights.
    public var backends: [BackendAddress]
    /// Weights, parallel to `backends`.
    public var weights: [UInt32]
    /// The selection table: indexes into `backends`.
    public var table: [UInt32]
    /// TCP connections go to the agent's proxy (WEFT_SVC_F_CAPTURE), not to `table`.
    public var capture: Bool = false

    /// weft_svc_val.flags.
    var flags: UInt8 { capture ? UInt8(WEFT_SVC_F_CAPTURE) : 0 }
}

/// Everything the kernel should hold for one snapshot on one node.
public struct DesiredState: Sendable {
    /// Frontends → services.
    public var services: [Frontend: DesiredService]
    /// Workloads on this node: cgroup path relative to the agent's --cgroup → address.
    public var workloads: [String: IPAddress]
    /// Plaintext inbound rules of this node's workload ports (weft_inpol_v1).
    public var inbound: [InboundKey: InboundRule]
    /// The mesh's outbound traffic policy (weft_egress_mode_v1).
    public var egressMode: OutboundTrafficPolicy = .allowAny
    /// Under REGISTRY_ONLY, the destinations the registry knows (weft_egress_v1); empty
    /// under ALLOW_ANY, where nobody reads them.
    public var egress: Set<EgressRule> = []

    /// Computes the desired state (selection tables included) from a snapshot;
    /// `steering`: the agent has an inbound listener that plaintext can be steered to;
    /// `resolvers`: the node's DNS resolvers (REGISTRY_ONLY lets workloads ask them).
    public init(snapshot: Snapshot, node: String, steering: Bool = false, resolvers: [IPAddress] = []) {
        var services: [Frontend: DesiredService] = [:]
        // Resolution NONE is passthrough: its addresses are not frontends.
        for se in snapshot.serviceEntries where se.resolution != .none {
            for port in se.ports {
                let lb = snapshot.loadBalancer(for: se, port: port.number)
                // Duplicate endpoints (same address and port) add up their weights.
                var weights: [BackendAddress: UInt32] = [:]
                for b in snapshot.backends(of: se, port: port) {
                    let key = BackendAddress(address: b.address, port: b.port)
                    weights[key, default: 0] &+= b.weight
                }
                let backends = weights.keys.sorted()
                let w = backends.map { weights[$0]! }
                let table = Self.table(lb, backends: backends, weights: w)
                let capture = snapshot.needsProxy(se, port: port)
                for vip in se.addresses {
                    let fe = Frontend(address: vip, port: port.number, proto: port.isUDP ? .udp : .tcp)
                    services[fe] = DesiredService(frontend: fe, service: "\(se.metadata.namespace)/\(se.metadata.name)",
                                                  loadBalancer: lb, backends: backends, weights: w, table: table, capture: capture)
                }
            }
        }
        var workloads: [String: IPAddress] = [:]
        for we in snapshot.workloadEntries where we.node == node {
            if let cg = we.cgroup { workloads[cg] = we.spec.address }
        }
        self.services = services
        self.workloads = workloads
        inbound = Self.inboundRules(snapshot: snapshot, node: node, steering: steering)
        egressMode = snapshot.outboundTrafficPolicy
        if egressMode == .registryOnly { egress = Self.egressRules(snapshot: snapshot, resolvers: resolvers) }
    }

    /// Builds a selection table for an algorithm.
    public static func table(_ lb: LoadBalancer, backends: [BackendAddress], weights: [UInt32]) -> [UInt32] {
        switch lb {
        case .random, .roundRobin, .leastRequest, .requestHash:
            // The last two are the proxy's (the port is captured); the table is only used
            // if the agent runs without a proxy (--proxy-port 0).
            return WeightedTable.table(weights: weights)
        case .maglev(let size):
            return Maglev.table(backends: zip(backends, weights).map { ($0.description, $1) }, size: size)
        }
    }
}

extension LoadBalancer {
    /// The kernel's algorithm code (enum weft_lb_algo).
    var algo: UInt8 {
        switch self {
        case .random, .leastRequest, .requestHash: return 0
        case .roundRobin: return 1
        case .maglev: return 2
        }
    }
}

extension DesiredState {
    /// Why this state would not fit the kernel maps, if it would not. Checked before any
    /// map is touched, so a too-large config is rejected whole like an invalid one.
    public func capacityProblems() -> [String] {
        var out: [String] = []
        let backends = Set(services.values.flatMap(\.backends))
        if services.count > Int(WEFT_MAX_SERVICES) {
            out.append("\(services.count) service frontends (VIP × port) exceed the datapath's capacity of \(WEFT_MAX_SERVICES) (weft_svc_v1)")
        }
        if backends.count > Int(WEFT_MAX_BACKENDS) / 2 {
            // Half: removed backends keep their entry while they drain.
            out.append("\(backends.count) distinct backends exceed \(Int(WEFT_MAX_BACKENDS) / 2), half of weft_backend_v1, kept free for draining")
        }
        if workloads.count > Int(WEFT_MAX_WORKLOADS) {
            out.append("\(workloads.count) workloads on this node exceed the capacity of \(WEFT_MAX_WORKLOADS) (weft_wl_v1)")
        }
        if inbound.count > Int(WEFT_MAX_INBOUND) {
            out.append("\(inbound.count) inbound rules (workload ports under PeerAuthentication or policy) exceed the capacity of \(WEFT_MAX_INBOUND) (weft_inpol_v1)")
        }
        if egress.count > Int(WEFT_MAX_EGRESS) {
            out.append("\(egress.count) registered destinations (REGISTRY_ONLY) exceed the capacity of \(WEFT_MAX_EGRESS) (weft_egress_v1)")
        }
        return out
    }
}
