import CWeftABI
import WeftConfig

/// A destination the registry knows, for REGISTRY_ONLY (weft_egress_v1): an address
/// range and one port of it (0: every port).
public struct EgressRule: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var prefixLength: UInt8
    public var port: UInt16

    public init(address: IPAddress, prefixLength: UInt8? = nil, port: UInt16) {
        self.address = address
        self.prefixLength = prefixLength ?? (address.family == 4 ? 32 : 128)
        self.port = port
    }

    public var description: String {
        let full = prefixLength == (address.family == 4 ? 32 : 128)
        let range = full ? "\(address)" : "\(address)/\(prefixLength)"
        return port == 0 ? "\(range) every port" : (address.family == 6 && full ? "[\(range)]:\(port)" : "\(range):\(port)")
    }

    public static func < (a: EgressRule, b: EgressRule) -> Bool {
        (a.address, a.prefixLength, a.port) < (b.address, b.prefixLength, b.port)
    }
}

extension DesiredState {
    /// What the registry lets a workload reach under REGISTRY_ONLY: every backend of
    /// every service port (endpoints, selected WorkloadEntries, resolved DNS names), the
    /// ports WorkloadEntries name, the addresses of resolution NONE services on their
    /// ports, and `resolvers` on port 53 (a query that is not sent to the agent's DNS
    /// server). Frontends are not listed: they are translated before egress is judged.
    static func egressRules(snapshot: Snapshot, resolvers: [IPAddress]) -> Set<EgressRule> {
        var rules = Set<EgressRule>()
        for se in snapshot.serviceEntries {
            for port in se.ports {
                if se.resolution == .none {
                    for a in se.addresses { rules.insert(EgressRule(address: a, port: port.number)) }
                } else {
                    for b in snapshot.backends(of: se, port: port) { rules.insert(EgressRule(address: b.address, port: b.port)) }
                }
            }
        }
        for we in snapshot.workloadEntries {
            for p in we.spec.ports.values { rules.insert(EgressRule(address: we.spec.address, port: p)) }
        }
        for r in resolvers { rules.insert(EgressRule(address: r, port: 53)) }
        return rules
    }
}

extension weft_egress_key {
    init(_ r: EgressRule) {
        self.init(prefixlen: 32 + UInt32(r.prefixLength), port: r.port.bigEndian, family: r.address.family, pad: 0, addr: addrTuple(r.address))
    }

    var rule: EgressRule {
        let bits = UInt8(clamping: Int(prefixlen) - 32)
        return EgressRule(address: IPAddress(family: family, bytes: addrBytes(addr)), prefixLength: bits, port: UInt16(bigEndian: port))
    }
}
