import Foundation

/// A backend of one service port, as selected by Istio's rules (inline endpoints, or
/// WorkloadEntries of the same namespace matched by workloadSelector).
public struct ServiceBackend: Hashable, Sendable, Codable {
    /// Address.
    public var address: IPAddress
    /// Port on the workload.
    public var port: UInt16
    /// Weight ≥ 1.
    public var weight: UInt32
    /// The WorkloadEntry it came from (nil for inline endpoints).
    public var workload: ResourceID?
    /// Its labels (what DestinationRule subsets select on).
    public var labels: [String: String] = [:]
    /// The node whose agent serves the workload (weft.io/node): a meshed endpoint.
    public var node: String?
}

/// One immutable, validated, versioned set of resources. Everything downstream reads
/// snapshots; nothing downstream writes config.
public struct Snapshot: Sendable {
    /// Monotonic revision, assigned by whoever commits the snapshot.
    public let revision: UInt64
    /// All resources by id.
    public let resources: [ResourceID: Resource]
    /// Hex digest of the content: each resource's id and normalized YAML, not where it was
    /// read from, so the same resources hash the same from a file, the admin socket or etcd,
    /// on every node (cluster mode compares them). Computed on demand.
    public var contentHash: String { Snapshot.hash(of: documents) }
    /// Warnings found while validating (errors never make it into a snapshot).
    public let warnings: [Diagnostic]
    /// Every resource's YAML document and origin.
    public internal(set) var documents: [ResourceID: Document] = [:]
    /// The mesh root namespace it was validated with (mesh-wide policies live there).
    public internal(set) var rootNamespace = ValidationOptions().rootNamespace
    /// The addresses given to ServiceEntries that name none (already in their
    /// `addresses`); the agent keeps this table for the next snapshot.
    public internal(set) var autoAddresses = AutoAddresses()
    /// The resolver's answers for DNS services' names (see `resolving`).
    public internal(set) var resolved = ResolvedNames()

    /// ServiceEntries, sorted by id.
    public let serviceEntries: [ServiceEntry]
    /// WorkloadEntries, sorted by id.
    public let workloadEntries: [WorkloadEntry]
    /// DestinationRules, sorted by id.
    public let destinationRules: [DestinationRule]
    /// VirtualServices, sorted by id.
    public let virtualServices: [VirtualService]
    /// PeerAuthentications, sorted by id.
    public let peerAuthentications: [PeerAuthentication]
    /// AuthorizationPolicies, sorted by id.
    public let authorizationPolicies: [AuthorizationPolicy]
    /// Telemetries, sorted by id.
    public let telemetries: [Telemetry]
    /// The MeshConfig (at most one, in the root namespace: validated).
    public let meshConfig: MeshConfig?
    /// WorkloadEntries by namespace, for selector matching.
    private let workloadsByNamespace: [String: [WorkloadEntry]]

    /// An empty snapshot.
    public static func empty(revision: UInt64 = 0) -> Snapshot {
        Snapshot(revision: revision, resources: [:], warnings: [])
    }

    init(revision: UInt64, resources: [ResourceID: Resource], warnings: [Diagnostic]) {
        self.revision = revision
        self.resources = resources
        self.warnings = warnings
        var se: [ServiceEntry] = [], we: [WorkloadEntry] = [], dr: [DestinationRule] = []
        var vs: [VirtualService] = [], pa: [PeerAuthentication] = [], ap: [AuthorizationPolicy] = [], tel: [Telemetry] = []
        var mesh: [MeshConfig] = []
        for id in resources.keys.sorted() {
            switch resources[id]! {
            case .serviceEntry(let r): se.append(r)
            case .workloadEntry(let r): we.append(r)
            case .destinationRule(let r): dr.append(r)
            case .virtualService(let r): vs.append(r)
            case .peerAuthentication(let r): pa.append(r)
            case .authorizationPolicy(let r): ap.append(r)
            case .telemetry(let r): tel.append(r)
            case .meshConfig(let r): mesh.append(r)
            }
        }
        serviceEntries = se
        workloadEntries = we
        destinationRules = dr
        virtualServices = vs
        peerAuthentications = pa
        authorizationPolicies = ap
        telemetries = tel
        meshConfig = mesh.first
        workloadsByNamespace = Dictionary(grouping: we, by: \.metadata.namespace)
    }

    /// The backends of `port` of `service`.
    public func backends(of service: ServiceEntry, port: ServicePort) -> [ServiceBackend] {
        func target(_ w: WorkloadSpec) -> UInt16 { w.ports[port.name] ?? port.targetPort ?? port.number }
        if let selector = service.workloadSelector {
            return (workloadsByNamespace[service.metadata.namespace] ?? [])
                .filter { we in selector.allSatisfy { k, v in we.spec.labels[k] == v } }
                .map { ServiceBackend(address: $0.spec.address, port: target($0.spec), weight: $0.spec.weight,
                                      workload: $0.id,
                                      labels: $0.spec.labels, node: $0.node) }
        }
        return service.endpoints.map { ServiceBackend(address: $0.address, port: target($0), weight: $0.weight, workload: nil, labels: $0.labels) }
            + service.namedEndpoints.flatMap { backends(of: service, named: $0, port: $0.ports[port.name] ?? port.targetPort ?? port.number) }
    }

    /// The DestinationRule that applies to a service: exact host match first, then the
    /// longest wildcard (Istio's precedence).
    public func destinationRule(for service: ServiceEntry) -> DestinationRule? {
        let rules = destinationRules
        if rules.isEmpty { return nil }
        for host in service.hosts {
            if let exact = rules.first(where: { $0.host == host }) { return exact }
        }
        return rules
            .filter { r in service.hosts.contains { HostName.matches(pattern: r.host, host: $0) } }
            .max { $0.host.count < $1.host.count }
    }

    /// The load balancer for a service port (RANDOM unless a DestinationRule says
    /// otherwise; a portLevelSettings entry for the port beats the rule's own).
    public func loadBalancer(for service: ServiceEntry, port: UInt16? = nil) -> LoadBalancer {
        let tp = destinationRule(for: service)?.trafficPolicy
        if let p = port, let lb = tp?.portLevelSettings[p]?.loadBalancer { return lb }
        return tp?.loadBalancer ?? .random
    }

    /// FNV-1a over each id and its document's YAML, in id order.
    static func hash(of documents: [ResourceID: Document]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
            for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        }
        for id in documents.keys.sorted() {
            mix(id.description.utf8)
            mix(CollectionOfOne(0))
            mix(documents[id]!.yaml.utf8)
            mix(CollectionOfOne(0))
        }
        return String(h, radix: 16)
    }
}

/// What validation needs to know beyond the resources themselves.
public struct ValidationOptions: Sendable {
    /// The mesh root namespace: a PeerAuthentication there without selector is mesh-wide.
    public var rootNamespace: String
    /// Nodes known to exist (the agent's own); a WorkloadEntry on another node is warned about.
    public var knownNodes: Set<String>
    /// Addresses given before to ServiceEntries that name none: kept (AutoAddresses).
    public var autoAddresses = AutoAddresses()
    /// The resolver's answers in force (DNS services' backends).
    public var resolved = ResolvedNames()

    /// Creates options.
    public init(rootNamespace: String = "weft-system", knownNodes: Set<String> = []) {
        self.rootNamespace = rootNamespace
        self.knownNodes = knownNodes
    }
}


/// Reads config files and builds validated snapshots.
public enum ConfigLoader {
    /// The result of parsing: resources that decoded cleanly and every diagnostic.
    public struct Parsed: Sendable {
        /// Resources without errors, with their documents.
        public var documents: [Document]
        /// The resources.
        public var resources: [Resource] { documents.map(\.resource) }
        /// Every problem found, in file order.
        public var diagnostics: [Diagnostic]
        /// Whether any diagnostic is an error.
        public var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }

        /// Creates a parse result.
        public init(documents: [Document], diagnostics: [Diagnostic]) {
            self.documents = documents
            self.diagnostics = diagnostics
        }
    }

    /// Parses YAML text (one file, possibly several documents).
    public static func parse(text: String, file: String) -> Parsed {
        let sink = DiagnosticSink()
        let docs = ResourceDecoder.decode(text: text, file: file, sink: sink)
        return Parsed(documents: docs, diagnostics: sink.items)
    }

    /// Parses texts whose resources get the given origin (positions still name `file`):
    /// pushed files (`apply`) and the documents of a persisted revision.
    public static func parse(_ texts: [(text: String, file: String, origin: String)]) -> Parsed {
        var all = Parsed(documents: [], diagnostics: [])
        for t in texts {
            var p = parse(text: t.text, file: t.file)
            for i in p.documents.indices { p.documents[i].origin = t.origin }
            all.documents += p.documents
            all.diagnostics += p.diagnostics
        }
        return all
    }

    /// The config files of a directory: `*.yaml` and `*.yml`, sorted, hidden files skipped
    /// (editors write those as temporaries).
    public static func configFiles(in dir: String) throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        return names.filter { !$0.hasPrefix(".") && ($0.hasSuffix(".yaml") || $0.hasSuffix(".yml")) }
            .sorted().map { (dir as NSString).appendingPathComponent($0) }
    }

    /// Parses files (directories are expanded to their config files).
    public static func parse(paths: [String]) -> Parsed {
        var all = Parsed(documents: [], diagnostics: [])
        for path in paths {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                all.diagnostics.append(Diagnostic(.error, "FILE001", at: SourcePosition(file: path, line: 1, column: 1), "no such file or directory"))
                continue
            }
            let files: [String]
            do { files = isDir.boolValue ? try configFiles(in: path) : [path] } catch {
                all.diagnostics.append(Diagnostic(.error, "FILE001", at: SourcePosition(file: path, line: 1, column: 1), "cannot list directory: \(error.localizedDescription)"))
                continue
            }
            for f in files {
                guard let data = FileManager.default.contents(atPath: f), let text = String(data: data, encoding: .utf8) else {
                    all.diagnostics.append(Diagnostic(.error, "FILE002", at: SourcePosition(file: f, line: 1, column: 1), "cannot read the file as UTF-8 text"))
                    continue
                }
                let p = parse(text: text, file: f)
                all.documents += p.documents
                all.diagnostics += p.diagnostics
            }
        }
        return all
    }

    /// Validates a whole set across resources and builds a snapshot; throws every error.
    public static func snapshot(_ parsed: Parsed, revision: UInt64, options: ValidationOptions = .init()) throws(ConfigError) -> Snapshot {
        let sink = DiagnosticSink()
        sink.items = parsed.diagnostics
        var byID: [ResourceID: Resource] = [:]
        var documents: [ResourceID: Document] = [:]
        for d in parsed.documents {
            let r = d.resource
            if let first = byID[r.id] {
                sink.error("CFG001", r.position, r.id.description, "defined twice (first at \(first.position))")
                continue
            }
            byID[r.id] = r
            documents[r.id] = d
        }
        var snap = Snapshot(revision: revision, resources: byID, warnings: [])
        snap.documents = documents
        snap.rootNamespace = options.rootNamespace
        // Document order (not id order) for the checks that blame the later of two
        // resources: what an apply pushes comes last, so a conflict points at it.
        crossValidate(snap, order: parsed.documents.map(\.resource.id), options: options, sink: sink)
        let ordered = sink.items.enumerated().sorted { a, b in
            let (pa, pb) = (a.element.position, b.element.position)
            return (pa.file, pa.line, pa.column, a.offset) < (pb.file, pb.line, pb.column, b.offset)
        }.map(\.element)
        if sink.hasErrors { throw ConfigError(ordered) }
        // Addresses for ServiceEntries that name none, after validation: they never
        // collide with a named one, and a conflict blames what the operator wrote.
        var auto = options.autoAddresses
        for se in auto.assign(snap.serviceEntries) { byID[Resource.serviceEntry(se).id] = .serviceEntry(se) }
        var result = Snapshot(revision: revision, resources: byID, warnings: ordered.filter { $0.severity == .warning })
        result.documents = documents
        result.rootNamespace = options.rootNamespace
        result.autoAddresses = auto
        result.resolved = options.resolved
        return result
    }

    static func crossValidate(_ snap: Snapshot, order: [ResourceID], options: ValidationOptions, sink: DiagnosticSink) {
        var seen = Set<ResourceID>()
        let inOrder = order.filter { seen.insert($0).inserted }.compactMap { snap.resources[$0] }
        let serviceEntries = inOrder.compactMap { if case .serviceEntry(let s) = $0 { return s } else { return nil } }
        // One frontend (VIP, port, L4 protocol) belongs to one service.
        var frontends: [String: ServiceEntry] = [:]
        for se in serviceEntries {
            let res = "ServiceEntry \(se.metadata.namespace)/\(se.metadata.name)"
            for vip in se.addresses {
                for p in se.ports {
                    let key = "\(vip.withPort(p.number))/\(p.isUDP ? "udp" : "tcp")"
                    if let other = frontends[key] {
                        sink.error("SE008", se.position, res, "\(key) is already the address of ServiceEntry \(other.metadata.namespace)/\(other.metadata.name) (\(other.position))")
                    }
                    frontends[key] = se
                    for b in snap.backends(of: se, port: p) where b.address.family != vip.family {
                        sink.error("SE009", se.position, res, "backend \(b.address.withPort(b.port)) of VIP \(vip) is of the other IP family; socket-level balancing stays within one family")
                    }
                }
            }
        }
        var hosts: [String: DestinationRule] = [:]
        let allHosts = Set(snap.serviceEntries.flatMap(\.hosts))
        for dr in snap.destinationRules {
            let res = "DestinationRule \(dr.metadata.namespace)/\(dr.metadata.name)"
            if let other = hosts[dr.host] {
                sink.error("DR005", dr.position, res, "host \(dr.host) already has DestinationRule \(other.metadata.namespace)/\(other.metadata.name) (\(other.position))")
            }
            hosts[dr.host] = dr
            if !allHosts.contains(dr.host) && !allHosts.contains(where: { HostName.matches(pattern: dr.host, host: $0) }) {
                sink.warning("DR006", dr.position, res, "host \(dr.host) matches no ServiceEntry")
            }
        }
        var cgroups: [String: WorkloadEntry] = [:]
        for we in snap.workloadEntries {
            guard let cg = we.cgroup else { continue }
            let key = "\(we.node ?? "")|\(cg)"
            if let other = cgroups[key] {
                sink.error("WE005", we.position, "WorkloadEntry \(we.metadata.namespace)/\(we.metadata.name)", "cgroup \(cg) on node \(we.node ?? "?") is already WorkloadEntry \(other.metadata.namespace)/\(other.metadata.name)")
            }
            cgroups[key] = we
        }
        for we in snap.workloadEntries {
            if let node = we.node, !options.knownNodes.isEmpty, !options.knownNodes.contains(node) {
                sink.warning("WE006", we.position, "WorkloadEntry \(we.metadata.namespace)/\(we.metadata.name)", "node \(node) (weft.io/node) is not a known node (\(options.knownNodes.sorted().joined(separator: ", ")))")
            }
        }

        // One host, one protocol per port, across ServiceEntries.
        var protocols: [String: (String, ServiceEntry)] = [:]
        for se in serviceEntries {
            for host in se.hosts {
                for p in se.ports {
                    let key = "\(host):\(p.number)"
                    if let (proto, other) = protocols[key], proto != p.protocolName, other != se {
                        sink.error("SE010", se.position, "ServiceEntry \(se.metadata.namespace)/\(se.metadata.name)",
                                   "\(key) is \(p.protocolName) here but \(proto) in ServiceEntry \(other.metadata.namespace)/\(other.metadata.name) (\(other.position))")
                    }
                    protocols[key] = (p.protocolName, se)
                }
            }
        }

        // Routes: every subset named must exist; every host should be a known service.
        let knownHosts = Set(snap.serviceEntries.flatMap(\.hosts))
        func subsets(of host: String) -> Set<String>? {
            let rules = snap.destinationRules.filter { HostName.matches(pattern: $0.host, host: host) }
            return rules.isEmpty ? nil : Set(rules.flatMap { $0.subsets.map(\.name) })
        }
        // One VirtualService per host: Istio would pick the oldest, and weft has no creation
        // time to order by, so two are a conflict to resolve, not a guess to make.
        var routed: [String: VirtualService] = [:]
        let virtualServices = inOrder.compactMap { if case .virtualService(let v) = $0 { return v } else { return nil } }
        for vs in virtualServices {
            for h in vs.hosts {
                if let other = routed[h], other != vs {
                    sink.error("VS022", vs.position, "VirtualService \(vs.metadata.namespace)/\(vs.metadata.name)",
                               "host \(h) is already routed by VirtualService \(other.metadata.namespace)/\(other.metadata.name) (\(other.position)); merge them")
                }
                routed[h] = vs
            }
        }
        for vs in snap.virtualServices {
            let res = "VirtualService \(vs.metadata.namespace)/\(vs.metadata.name)"
            var warned = Set<String>()
            for h in vs.hosts where !knownHosts.contains(h) && !knownHosts.contains(where: { HostName.matches(pattern: h, host: $0) }) {
                sink.warning("VS021", vs.position, res, "host \(h) matches no ServiceEntry")
                warned.insert(h)
            }
            let dests = vs.http.flatMap { $0.route.map(\.destination) + ($0.mirror.map { [$0] } ?? []) } + vs.tcp.flatMap { $0.route.map(\.destination) }
            for d in dests {
                if let subset = d.subset {
                    if !(subsets(of: d.host) ?? []).contains(subset) {
                        sink.error("VS020", d.position, res, "subset \(subset) of host \(d.host) is defined by no DestinationRule")
                    }
                }
                if !knownHosts.contains(d.host) && warned.insert(d.host).inserted {
                    sink.warning("VS021", d.position, res, "destination host \(d.host) matches no ServiceEntry")
                }
            }
        }

        // At most one namespace-wide (or mesh-wide) PeerAuthentication per namespace.
        var wide: [String: PeerAuthentication] = [:]
        for pa in snap.peerAuthentications where pa.selector == nil {
            if let other = wide[pa.metadata.namespace] {
                let scope = pa.scope(rootNamespace: options.rootNamespace) == .mesh ? "mesh-wide" : "namespace-wide"
                sink.error("PA003", pa.position, "PeerAuthentication \(pa.metadata.namespace)/\(pa.metadata.name)",
                           "a second \(scope) policy in namespace \(pa.metadata.namespace) (first: \(other.metadata.name), \(other.position)); keep one")
            }
            wide[pa.metadata.namespace] = pa
        }

        // One MeshConfig, in the root namespace: it is the mesh's, not a namespace's.
        var meshConfig: ResourceID?
        for case .meshConfig(let mc) in inOrder {
            let res = "MeshConfig \(mc.metadata.namespace)/\(mc.metadata.name)"
            if mc.metadata.namespace != options.rootNamespace {
                sink.error("MC002", mc.position, res, "a MeshConfig is the mesh's: put it in the root namespace \(options.rootNamespace)")
            } else if let other = meshConfig {
                sink.error("MC003", mc.position, res, "a second MeshConfig (first: \(other.name)); keep one")
            } else {
                meshConfig = Resource.meshConfig(mc).id
            }
        }

        // At most one namespace-wide (or mesh-wide) Telemetry per namespace: Istio's
        // choice between two is undefined.
        var wideTelemetry: [String: Telemetry] = [:]
        for t in snap.telemetries where t.selector == nil {
            if let other = wideTelemetry[t.metadata.namespace] {
                sink.error("TEL005", t.position, "Telemetry \(t.metadata.namespace)/\(t.metadata.name)",
                           "a second Telemetry without selector in namespace \(t.metadata.namespace) (first: \(other.metadata.name), \(other.position)); keep one")
            }
            wideTelemetry[t.metadata.namespace] = t
        }

        // Two workload-scope PeerAuthentications selecting one workload: Istio takes the
        // older, which a file has no notion of; weft takes the first by name and says so.
        for we in snap.workloadEntries {
            let pas = snap.workloadPeerAuthentications(for: we)
            guard pas.count > 1 else { continue }
            let names = pas.map(\.metadata.name)
            sink.warning("PA004", pas[1].position, "PeerAuthentication \(pas[1].metadata.namespace)/\(pas[1].metadata.name)",
                         "selects WorkloadEntry \(we.metadata.namespace)/\(we.metadata.name) as \(names.dropLast().joined(separator: ", ")) does too; weft applies \(names[0]) (first by name), Istio the oldest: keep one")
        }
    }
}
