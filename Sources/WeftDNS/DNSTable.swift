import WeftConfig

/// The names the mesh answers itself: every ServiceEntry host with its addresses, and —
/// as Istio's DNS proxy does — the short forms a workload of the host's namespace (or of
/// another) may ask for: for `reviews.prod.svc.cluster.local`, `reviews` from namespace
/// prod, and `reviews.prod` and `reviews.prod.svc` from anywhere. A name the workload's
/// resolver has extended with one of the node's search domains (`reviews.corp.example`)
/// is answered as the name without it, so the answer comes at the first query instead of
/// after an upstream NXDOMAIN per search domain.
public struct DNSTable: Sendable {
    /// A name's addresses, by family.
    public struct Addresses: Hashable, Sendable {
        public var v4: [IPAddress] = []
        public var v6: [IPAddress] = []
    }

    /// Fully qualified names (and the namespace-free short forms).
    private var global: [DNSName: Addresses] = [:]
    /// Per namespace: the one-label short forms of that namespace's hosts.
    private var local: [String: [DNSName: Addresses]] = [:]
    /// The node's search domains (resolv.conf), longest first.
    private let search: [DNSName]

    /// One host of a ServiceEntry: its name and its addresses (given or allocated). The
    /// namespace its short form belongs to is the one its name says
    /// (`<service>.<namespace>.svc.<domain>`), as for a Kubernetes service.
    public struct Host: Sendable {
        public var name: String
        public var addresses: [IPAddress]

        public init(name: String, addresses: [IPAddress]) {
            self.name = name
            self.addresses = addresses
        }
    }

    public init(hosts: [Host] = [], searchDomains: [String] = []) {
        search = searchDomains.compactMap { DNSName($0) }.filter { !$0.labels.isEmpty }.sorted { $0.labels.count > $1.labels.count }
        for h in hosts where !h.name.hasPrefix("*") {
            guard let name = DNSName(h.name) else { continue }
            var a = Addresses()
            for ip in h.addresses.sorted() {
                if ip.family == 4 { a.v4.append(ip) } else { a.v6.append(ip) }
            }
            Self.add(&global, name, a)
            // <service>.<namespace>.svc.<domain>: the Kubernetes forms.
            let l = name.labels
            if l.count >= 4, DNSName(labels: [l[2]]) == DNSName(labels: [Array("svc".utf8)]) {
                Self.add(&global, DNSName(labels: Array(l[0..<2])), a)
                Self.add(&global, DNSName(labels: Array(l[0..<3])), a)
                Self.add(&local[DNSName(labels: [l[1]]).key, default: [:]], DNSName(labels: [l[0]]), a)
            }
        }
    }

    /// Two hosts that share a short form: the addresses of both (as two Kubernetes
    /// services could not, two ServiceEntries may).
    private static func add(_ table: inout [DNSName: Addresses], _ name: DNSName, _ a: Addresses) {
        var e = table[name] ?? Addresses()
        e.v4 += a.v4.filter { !e.v4.contains($0) }
        e.v6 += a.v6.filter { !e.v6.contains($0) }
        table[name] = e
    }

    /// What `name` is for a workload of `namespace` (nil: not a workload of the mesh), if
    /// the mesh knows it. The namespace is asked for only when the answer depends on it (a
    /// one-label name): finding it costs the agent a question to the kernel.
    public func lookup(_ name: DNSName, namespace: () -> String?) -> Addresses? {
        var asked: String??
        let once = { () -> String? in
            if asked == nil { asked = .some(namespace()) }
            return asked!
        }
        if let hit = exact(name, namespace: once) { return hit }
        for s in search {
            if let base = name.dropping(suffix: s), !base.labels.isEmpty, let hit = exact(base, namespace: once) { return hit }
        }
        return nil
    }

    private func exact(_ name: DNSName, namespace: () -> String?) -> Addresses? {
        if let hit = global[name] { return hit }
        if name.labels.count == 1, !local.isEmpty, let ns = namespace(), let hit = local[ns.lowercased()]?[name] { return hit }
        return nil
    }

    /// How many names it answers (short forms included), for logs.
    public var count: Int { global.count + local.values.reduce(0) { $0 + $1.count } }
}
