/// Addresses for ServiceEntries that name none — what Istio's DNS proxy does with
/// ISTIO_META_DNS_AUTO_ALLOCATE: the agent's DNS answers their hosts with the address, and
/// the kernel balances it as any VIP. From Istio's range, 240.240.0.0/16 (class E: never
/// routed, never a real host's).
///
/// Stable: a ServiceEntry keeps its address for as long as it exists without addresses of
/// its own — across revisions, and across restarts (the agent keeps the table in its
/// state directory). A new one's address comes from a hash of its namespace and name, so
/// two nodes that never saw a collision give it the same address; a collision takes the
/// next free one.
public struct AutoAddresses: Sendable, Equatable, Codable {
    /// "namespace/name" of a ServiceEntry → its address.
    public private(set) var assigned: [String: IPAddress] = [:]

    public init(assigned: [String: IPAddress] = [:]) {
        self.assigned = assigned
    }

    /// How many addresses the range holds (240.240.0.1 to 240.240.255.254).
    static let size: UInt32 = 65534

    static func key(_ se: ServiceEntry) -> String { "\(se.metadata.namespace)/\(se.metadata.name)" }

    /// Whether `se` gets an address: it names none, has a host a client can ask for by
    /// name (a wildcard host cannot be answered), and is balanced (resolution NONE is
    /// passthrough: its clients must reach the address the name really has).
    static func wants(_ se: ServiceEntry) -> Bool {
        se.addresses.isEmpty && se.resolution != .none && se.hosts.contains { !$0.hasPrefix("*") }
    }

    /// FNV-1a of the key: the same slot on every node and every run (Swift's Hasher is
    /// seeded per process).
    static func slot(_ key: String) -> UInt32 {
        var h: UInt32 = 2_166_136_261
        for b in key.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return h % size
    }

    static func address(_ slot: UInt32) -> IPAddress {
        let n = slot + 1
        return IPAddress(family: 4, bytes: [240, 240, UInt8(n >> 8), UInt8(n & 0xFF)])
    }

    /// `entries` with an address for each that wants one; what was assigned before is
    /// kept, what no longer wants one is let go. `taken`: addresses ServiceEntries name
    /// themselves, which are never handed out.
    mutating func assign(_ entries: [ServiceEntry]) -> [ServiceEntry] {
        let wanting = Set(entries.filter(Self.wants).map(Self.key))
        let taken = Set(entries.flatMap(\.addresses))
        assigned = assigned.filter { wanting.contains($0.key) && !taken.contains($0.value) }
        var used = Set(assigned.values).union(taken)
        for key in wanting.sorted() where assigned[key] == nil {
            var s = Self.slot(key)
            for _ in 0..<Self.size {
                if !used.contains(Self.address(s)) { break }
                s = (s + 1) % Self.size
            }
            let a = Self.address(s)
            guard !used.contains(a) else { continue } // all 65,534 in use: it stays without
            assigned[key] = a
            used.insert(a)
        }
        return entries.map { se in
            guard Self.wants(se), let a = assigned[Self.key(se)] else { return se }
            var out = se
            out.addresses = [a]
            return out
        }
    }
}
