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
}

/// One immutable, validated, versioned set of resources. Everything downstream reads
/// snapshots; nothing downstream writes config.
public struct Snapshot: Sendable {
    /// Monotonic revision, assigned by whoever commits the snapshot.
    public let revision: UInt64
    /// All resources by id.
    public let resources: [ResourceID: Resource]
    /// Hex digest of the content (stable across loads and processes). Computed on demand:
    /// encoding every resource costs more than parsing them.
    public var contentHash: String { Snapshot.hash(of: resources) }
    /// Warnings found while validating (errors never make it into a snapshot).
    public let warnings: [Diagnostic]

    /// ServiceEntries, sorted by id.
    public let serviceEntries: [ServiceEntry]
    /// WorkloadEntries, sorted by id.
    public let workloadEntries: [WorkloadEntry]
    /// DestinationRules, sorted by id.
    public let destinationRules: [DestinationRule]
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
        for id in resources.keys.sorted() {
            switch resources[id]! {
            case .serviceEntry(let r): se.append(r)
            case .workloadEntry(let r): we.append(r)
            case .destinationRule(let r): dr.append(r)
            }
        }
        serviceEntries = se
        workloadEntries = we
        destinationRules = dr
        workloadsByNamespace = Dictionary(grouping: we, by: \.metadata.namespace)
    }

    /// The backends of `port` of `service`.
    public func backends(of service: ServiceEntry, port: ServicePort) -> [ServiceBackend] {
        func target(_ w: WorkloadSpec) -> UInt16 { w.ports[port.name] ?? port.targetPort ?? port.number }
        if let selector = service.workloadSelector {
            return (workloadsByNamespace[service.metadata.namespace] ?? [])
                .filter { we in selector.allSatisfy { k, v in we.spec.labels[k] == v } }
                .map { ServiceBackend(address: $0.spec.address, port: target($0.spec), weight: $0.spec.weight,
                                      workload: ResourceID(kind: "WorkloadEntry", namespace: $0.metadata.namespace, name: $0.metadata.name)) }
        }
        return service.endpoints.map { ServiceBackend(address: $0.address, port: target($0), weight: $0.weight, workload: nil) }
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

    /// The load balancer for a service (RANDOM unless a DestinationRule says otherwise).
    public func loadBalancer(for service: ServiceEntry) -> LoadBalancer {
        destinationRule(for: service)?.loadBalancer ?? .random
    }

    static func hash(of resources: [ResourceID: Resource]) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for id in resources.keys.sorted() {
            let data = (try? enc.encode(resources[id]!)) ?? Data()
            for b in Array(id.description.utf8) + Array(data) {
                h = (h ^ UInt64(b)) &* 0x100_0000_01b3
            }
        }
        return String(h, radix: 16)
    }
}

/// Reads config files and builds validated snapshots.
public enum ConfigLoader {
    /// The result of parsing: resources that decoded cleanly and every diagnostic.
    public struct Parsed: Sendable {
        /// Resources without errors.
        public var resources: [Resource]
        /// Every problem found, in file order.
        public var diagnostics: [Diagnostic]
        /// Whether any diagnostic is an error.
        public var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }
    }

    /// Parses YAML text (one file, possibly several documents).
    public static func parse(text: String, file: String) -> Parsed {
        let sink = DiagnosticSink()
        let r = ResourceDecoder.decode(text: text, file: file, sink: sink)
        return Parsed(resources: r, diagnostics: sink.items)
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
        var all = Parsed(resources: [], diagnostics: [])
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
                all.resources += p.resources
                all.diagnostics += p.diagnostics
            }
        }
        return all
    }

    /// Validates a whole set across resources and builds a snapshot; throws every error.
    public static func snapshot(_ parsed: Parsed, revision: UInt64) throws(ConfigError) -> Snapshot {
        let sink = DiagnosticSink()
        sink.items = parsed.diagnostics
        var byID: [ResourceID: Resource] = [:]
        for r in parsed.resources {
            if let first = byID[r.id] {
                sink.error("CFG001", r.position, r.id.description, "defined twice (first at \(first.position))")
                continue
            }
            byID[r.id] = r
        }
        let snap = Snapshot(revision: revision, resources: byID, warnings: [])
        crossValidate(snap, sink: sink)
        if sink.hasErrors { throw ConfigError(sink.items) }
        return Snapshot(revision: revision, resources: byID, warnings: sink.items.filter { $0.severity == .warning })
    }

    static func crossValidate(_ snap: Snapshot, sink: DiagnosticSink) {
        // One frontend (VIP, port, L4 protocol) belongs to one service.
        var frontends: [String: ServiceEntry] = [:]
        for se in snap.serviceEntries {
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
    }
}
