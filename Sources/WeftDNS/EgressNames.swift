import WeftConfig

/// The names whose answers register addresses for REGISTRY_ONLY: the hosts of
/// `resolution: NONE` ServiceEntries (exact, or `*.suffix`), each with its service ports.
/// A workload that looks such a name up through the agent may then connect to what the
/// answer says — as Istio lets such a host through by its name, and Cilium's toFQDNs
/// policies do by the DNS answers they see.
public struct EgressNames: Sendable {
    private var exact: [String: [UInt16]] = [:]
    /// ".suffix" → ports, for `*.suffix` hosts.
    private var suffixes: [(String, [UInt16])] = []

    public init(hosts: [(name: String, ports: [UInt16])] = []) {
        for (name, ports) in hosts {
            let n = name.lowercased()
            if n.hasPrefix("*.") {
                suffixes.append((String(n.dropFirst()), ports))
            } else {
                exact[n, default: []] += ports
            }
        }
        suffixes.sort { $0.0.count > $1.0.count }
    }

    public var isEmpty: Bool { exact.isEmpty && suffixes.isEmpty }

    /// The ports answers for `name` (lowercase, no trailing dot) open; nil if it is none
    /// of these names. Every matching host counts.
    public func ports(for name: String) -> [UInt16]? {
        var out = exact[name] ?? []
        for (suffix, ports) in suffixes where name.hasSuffix(suffix) { out += ports }
        return out.isEmpty ? nil : out
    }
}

/// Addresses a DNS answer gave for a registered name: what the agent lets workloads
/// connect to, on `ports`, for at least `ttl` seconds.
public struct LearnedAddresses: Sendable {
    public var name: String
    public var ports: [UInt16]
    public var addresses: [IPAddress]
    public var ttl: UInt32

    public init(name: String, ports: [UInt16], addresses: [IPAddress], ttl: UInt32) {
        self.name = name
        self.ports = ports
        self.addresses = addresses
        self.ttl = ttl
    }
}

extension DNSServer {
    /// Answers for `names` are handed to `learn` before they go back to the workload (so
    /// the addresses are open by the time it connects); empty names turn it off.
    public func update(egressNames names: EgressNames, learn: (@Sendable (LearnedAddresses) -> Void)?) {
        loop.execute { self.egress = names.isEmpty ? nil : (names, learn) }
    }

    /// On the server's loop, with an answer about to go back for `query`.
    func learn(from answer: [UInt8], for query: DNSMessage) {
        guard let (names, learn) = egress, let learn, let q = query.questions.first,
              q.type == DNSType.a || q.type == DNSType.aaaa || q.type == DNSType.any,
              let ports = names.ports(for: q.name.key),
              let m = try? DNSMessage(parsing: answer), m.rcode == DNSRCode.noError.rawValue else { return }
        // Every address of the answer: a CNAME chain ends in records owned by another name.
        let records = m.answers.filter { ($0.type == DNSType.a || $0.type == DNSType.aaaa) && $0.klass == DNSClass.internet }
        guard !records.isEmpty else { return }
        let addresses = records.map { IPAddress(family: $0.type == DNSType.a ? 4 : 6, bytes: $0.rdata) }
        learn(LearnedAddresses(name: q.name.key, ports: ports, addresses: addresses, ttl: records.map(\.ttl).min() ?? 0))
    }
}
