/// What the agent's resolver last learned for the names of `resolution: DNS` and
/// `DNS_ROUND_ROBIN` ServiceEntries: their backends are these addresses. Not config (no
/// revision changes when an answer does); the agent gives each snapshot the table in
/// force (`Snapshot.resolving`).
public struct ResolvedNames: Sendable, Equatable {
    /// Name → its addresses in the order of the last answer (A then AAAA).
    public var addresses: [String: [IPAddress]] = [:]

    public init(addresses: [String: [IPAddress]] = [:]) {
        self.addresses = addresses
    }
}

extension Snapshot {
    /// The names to resolve, each with the address families its services' VIPs need (a
    /// socket is translated within its family: an IPv4 VIP wants A records).
    public var namesToResolve: [String: Set<UInt8>] {
        var out: [String: Set<UInt8>] = [:]
        for se in serviceEntries where se.resolution.resolves {
            let families = se.addresses.isEmpty ? [4, 6] : Set(se.addresses.map(\.family))
            for e in se.namedEndpoints { out[e.name, default: []].formUnion(families) }
        }
        return out
    }

    /// This snapshot with `resolved` as its resolver table: same revision and resources,
    /// the DNS services' backends from `resolved`.
    public func resolving(_ resolved: ResolvedNames) -> Snapshot {
        var s = self
        s.resolved = resolved
        return s
    }

    /// The backends a named endpoint stands for: its resolved addresses of the VIPs'
    /// families (the first only, for DNS_ROUND_ROBIN).
    func backends(of service: ServiceEntry, named e: NamedEndpoint, port: UInt16) -> [ServiceBackend] {
        var addrs = resolved.addresses[e.name] ?? []
        if !service.addresses.isEmpty {
            let families = Set(service.addresses.map(\.family))
            addrs = addrs.filter { families.contains($0.family) }
        }
        if service.resolution == .dnsRoundRobin { addrs = Array(addrs.prefix(1)) }
        return addrs.map { ServiceBackend(address: $0, port: port, weight: e.weight, workload: nil, labels: e.labels) }
    }
}
