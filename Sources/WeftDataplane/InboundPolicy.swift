import CWeftABI
import WeftConfig

/// A workload port with an inbound rule (port 0: the workload's other ports).
public struct InboundKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `10.0.0.1:9080`, or `10.0.0.1 other ports` for the default.
    public var description: String { port == 0 ? "\(address) other ports" : address.withPort(port) }

    public static func < (a: InboundKey, b: InboundKey) -> Bool { (a.address, a.port) < (b.address, b.port) }
}

/// What the kernel does with a plaintext TCP connection attempt to a workload port
/// (enum weft_inpol_action plus its flags).
public struct InboundRule: Hashable, Sendable, CustomStringConvertible {
    public enum Action: Sendable {
        /// Let it through to the workload.
        case pass
        /// STRICT: drop (only the agent's tunnel delivers to the port).
        case drop
        /// Into the agent's inbound listener (authorization, telemetry).
        case steer

        /// enum weft_inpol_action.
        var kernel: UInt8 {
            switch self {
            case .pass: return UInt8(WEFT_INPOL_PASS.rawValue)
            case .drop: return UInt8(WEFT_INPOL_DROP.rawValue)
            case .steer: return UInt8(WEFT_INPOL_STEER.rawValue)
            }
        }

        init(kernel: UInt8) {
            switch UInt32(kernel) {
            case WEFT_INPOL_DROP.rawValue: self = .drop
            case WEFT_INPOL_STEER.rawValue: self = .steer
            default: self = .pass
            }
        }
    }

    public var action: Action
    /// An AuthorizationPolicy applies: plaintext the agent cannot see is refused.
    public var authz: Bool

    public init(action: Action, authz: Bool) {
        self.action = action
        self.authz = authz
    }

    public static let pass = InboundRule(action: .pass, authz: false)

    public var description: String {
        switch action {
        case .pass: return "pass"
        case .drop: return "drop (STRICT)"
        case .steer: return authz ? "steer to agent (authorization)" : "steer to agent (telemetry)"
        }
    }
}

extension DesiredState {
    /// The inbound rules of this node's workloads: STRICT drops; a port under
    /// AuthorizationPolicy is always steered (refused when it cannot be); an HTTP port
    /// is steered for telemetry when the agent has an inbound listener (`steering`).
    /// A workload whose every port passes has no entry at all.
    static func inboundRules(snapshot: Snapshot, node: String, steering: Bool) -> [InboundKey: InboundRule] {
        var rules: [InboundKey: InboundRule] = [:]
        // Workload ports that services name, and whether they speak HTTP.
        var servicePorts: [ResourceID: [UInt16: Bool]] = [:]
        for se in snapshot.serviceEntries {
            for port in se.ports where !port.isUDP {
                for b in snapshot.backends(of: se, port: port) where b.node == node {
                    guard let w = b.workload else { continue }
                    if port.isHTTP || servicePorts[w]?[b.port] == nil { servicePorts[w, default: [:]][b.port] = port.isHTTP }
                }
            }
        }
        for we in snapshot.workloadEntries where we.node == node {
            let authz = !AuthorizationEngine(snapshot: snapshot, workload: we).policies.isEmpty
            func rule(_ port: UInt16?, http: Bool) -> InboundRule {
                if snapshot.mtls(for: we, port: port).mode == .strict { return InboundRule(action: .drop, authz: authz) }
                if authz || (steering && http) { return InboundRule(action: .steer, authz: authz) }
                return .pass
            }
            var ports = servicePorts[we.id] ?? [:]
            for p in we.spec.ports.values where ports[p] == nil { ports[p] = false }
            for pa in snapshot.workloadPeerAuthentications(for: we).prefix(1) {
                for p in pa.portLevelMtls.keys where ports[p] == nil { ports[p] = false }
            }
            let fallback = rule(nil, http: false)
            var own: [InboundKey: InboundRule] = [:]
            for (port, http) in ports {
                let r = rule(port, http: http)
                if r != fallback { own[InboundKey(address: we.spec.address, port: port)] = r }
            }
            guard fallback != .pass || !own.isEmpty else { continue }
            rules.merge(own) { a, _ in a }
            rules[InboundKey(address: we.spec.address, port: 0)] = fallback
        }
        return rules
    }
}

extension weft_inpol_key {
    init(_ k: InboundKey) {
        self.init(addr: addrTuple(k.address), port: k.port.bigEndian, family: k.address.family, pad: 0)
    }

    var key: InboundKey { InboundKey(address: IPAddress(family: family, bytes: addrBytes(addr)), port: UInt16(bigEndian: port)) }
}

extension weft_inpol_val {
    init(_ r: InboundRule) {
        self.init(action: r.action.kernel, flags: r.authz ? UInt8(WEFT_INPOL_F_AUTHZ) : 0, pad: (0, 0))
    }

    var rule: InboundRule { InboundRule(action: .init(kernel: action), authz: flags & UInt8(WEFT_INPOL_F_AUTHZ) != 0) }
}

/// Why the kernel handled a plaintext connection attempt (enum weft_in_reason), as
/// metrics and `weft map dump` name it.
public let inboundReasonNames = ["strict_network", "strict_local", "steered", "no_listener", "unsteerable", "squatted"]

/// One counter of weft_inctr_v1, summed over CPUs.
public struct InboundCount: Sendable, Hashable {
    public var address: IPAddress
    public var reason: String
    public var count: UInt64
}
