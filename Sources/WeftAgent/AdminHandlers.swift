import Foundation
import WeftConfig
import WeftProxy

/// The admin API: what each request does to the agent's config.
extension Agent {
    func handle(_ request: AdminRequest) -> AdminResponse {
        if let etcd = options.etcd, [.apply, .delete, .rollback].contains(request.op) {
            return .failure("this agent follows etcd (--etcd \(etcd.text)): change the config there, with `weft \(request.op.rawValue) --etcd \(etcd.text)`")
        }
        switch request.op {
        case .monitor, .handover:
            return .failure("\(request.op.rawValue) is answered on its own connection (AdminServer hands it over)")
        case .status:
            var r = AdminResponse(ok: true)
            r.status = lock.withLock { status }
            return r
        case .apply: return handleApply(request.files ?? [])
        case .delete: return handleDelete(request.ids ?? [])
        case .get: return handleGet(kind: request.kind, name: request.name, namespace: request.namespace)
        case .diff: return handleDiff(request.files ?? [])
        case .history:
            var r = AdminResponse(ok: true)
            r.history = store?.list() ?? []
            return r
        case .rollback:
            guard let n = request.revision else { return .failure("rollback needs a revision") }
            return handleRollback(n)
        case .certificates:
            do {
                var r = AdminResponse(ok: true)
                r.certificates = try certificates?.info() ?? []
                return r
            } catch {
                return .failure("reading workload certificates: \(error)")
            }
        case .authz:
            guard let q = request.authz else { return .failure("authz needs a query") }
            return handleAuthz(q)
        case .graph:
            guard let proxy = lock.withLock({ proxy }), options.metricsPort != 0 else {
                return .failure("the graph comes from the agent's metrics, and this agent has none (--proxy-port 0 or --metrics-port 0)")
            }
            var r = AdminResponse(ok: true)
            r.graph = proxy.graph.graph(window: min(max(request.window ?? 60, GraphRecorder.interval), GraphRecorder.longest))
            return r
        }
    }

    /// Evaluates a hypothetical request against the running config's AuthorizationPolicies.
    func handleAuthz(_ q: AuthzQuery) -> AdminResponse {
        let snap = lock.withLock { snapshot }
        guard let we = snap.workloadEntries.first(where: { "\($0.metadata.namespace)/\($0.metadata.name)" == q.to }) else {
            return .failure("no WorkloadEntry \(q.to) in the running config (give NAMESPACE/NAME)")
        }
        var http: AuthzRequest.HTTP?
        var normalized: String?
        if q.method != nil || q.path != nil {
            guard let (path, _) = PathNormalizer.normalize(q.path ?? "/") else {
                return .failure("path \(q.path ?? "") is refused before authorization (400): an encoded NUL, a control character, or not absolute")
            }
            normalized = path
            http = .init(host: q.host ?? "", method: q.method ?? "GET", path: path, headers: [])
        }
        var source: IPAddress?
        if let ip = q.sourceIP {
            guard let parsed = IPAddress(ip) else { return .failure("--source-ip \(ip) is not an IP address") }
            source = parsed
        }
        let engine = AuthorizationEngine(snapshot: snap, workload: we)
        let d = engine.evaluate(AuthzRequest(identity: q.from, sourceIP: source, destinationIP: we.spec.address, destinationPort: q.port,
                                             http: http))
        var r = AdminResponse(ok: true)
        r.authz = AuthzAnswer(allowed: d.allowed, reason: d.reason, policy: d.policy.map { "\($0.namespace)/\($0.name)" }, rule: d.rule,
                              audited: d.audited.map { "\($0.namespace)/\($0.name)" }, normalizedPath: normalized,
                              policies: engine.policies.map { "\($0.metadata.namespace)/\($0.metadata.name) (\($0.action.rawValue))" })
        return r
    }

    /// Parses pushed files; their resources get origin `apply`.
    func parsePushed(_ files: [SourceFile]) -> ConfigLoader.Parsed {
        ConfigLoader.parse(files.map { ($0.text, $0.path, Self.applied) })
    }

    func respond(_ result: CommitResult) -> AdminResponse {
        switch result {
        case .committed(let snap, let ms):
            var r = AdminResponse(ok: true)
            r.revision = snap.revision
            r.changed = true
            r.datapathMs = ms
            r.diagnostics = snap.warnings
            return r
        case .unchanged(let snap):
            var r = AdminResponse(ok: true)
            r.revision = snap.revision
            r.changed = false
            return r
        case .rejected(let diagnostics):
            return .failure("rejected: nothing was changed (still revision \(lock.withLock { snapshot.revision }))", diagnostics)
        case .failed(let message, let diagnostics):
            return .failure("\(message); nothing was changed", diagnostics)
        }
    }

    func handleApply(_ files: [SourceFile]) -> AdminResponse {
        let pushed = parsePushed(files)
        if pushed.hasErrors { return respond(.rejected(pushed.diagnostics)) }
        if pushed.documents.isEmpty { return .failure("nothing to apply: the files hold no resources") }
        return respond(commit(reason: "apply") { current throws(ChangeRefused) in
            let byID = Dictionary(current.map { ($0.resource.id, $0) }, uniquingKeysWith: { a, _ in a })
            var conflict: [Diagnostic] = []
            for d in pushed.documents {
                if let existing = byID[d.resource.id], existing.origin != Self.applied {
                    conflict.append(Diagnostic(.error, "CFG002", at: d.resource.position, resource: d.resource.id.description,
                                               "is defined by \(existing.origin) in the config dir; change it there (weft apply does not override the config dir)"))
                }
            }
            if !conflict.isEmpty { throw ChangeRefused(message: "rejected", diagnostics: conflict) }
            let replaced = Set(pushed.documents.map(\.resource.id))
            return current.filter { !replaced.contains($0.resource.id) } + pushed.documents
        })
    }

    func handleDelete(_ ids: [ResourceID]) -> AdminResponse {
        if ids.isEmpty { return .failure("nothing to delete") }
        return respond(commit(reason: "delete") { current throws(ChangeRefused) in
            let byID = Dictionary(current.map { ($0.resource.id, $0) }, uniquingKeysWith: { a, _ in a })
            var problems: [String] = []
            for id in ids {
                guard let d = byID[id] else { problems.append("\(id) does not exist"); continue }
                if d.origin != Self.applied { problems.append("\(id) comes from \(d.origin) in the config dir; remove it there") }
            }
            if !problems.isEmpty { throw ChangeRefused(message: problems.joined(separator: "; ")) }
            let gone = Set(ids)
            return current.filter { !gone.contains($0.resource.id) }
        })
    }

    /// kubectl-style kind names: full, lowercase, plural, and Istio's short names.
    public static func kindMatches(_ query: String, _ kind: String) -> Bool {
        let q = query.lowercased()
        let short: [String: String] = ["se": "ServiceEntry", "we": "WorkloadEntry", "vs": "VirtualService", "dr": "DestinationRule",
                                       "pa": "PeerAuthentication", "ap": "AuthorizationPolicy"]
        if let full = short[q] { return full == kind }
        let k = kind.lowercased()
        return q == k || q == k + "s" || (k.hasSuffix("y") && q == k.dropLast() + "ies")
    }

    func handleGet(kind: String?, name: String?, namespace: String?) -> AdminResponse {
        let snap = lock.withLock { snapshot }
        var r = AdminResponse(ok: true)
        r.revision = snap.revision
        do {
            r.resources = try StoredResource.select(snap.documents.keys.sorted().map { snap.documents[$0]! }, kind: kind, name: name, namespace: namespace)
        } catch {
            return .failure("\(error)")
        }
        return r
    }

    func handleDiff(_ files: [SourceFile]) -> AdminResponse {
        let pushed = parsePushed(files)
        if pushed.hasErrors { return respond(.rejected(pushed.diagnostics)) }
        let snap = lock.withLock { snapshot }
        var r = AdminResponse(ok: true)
        r.revision = snap.revision
        r.diff = DiffEntry.between(Array(snap.documents.values), pushed.documents)
        return r
    }

    func handleRollback(_ revision: UInt64) -> AdminResponse {
        guard let store else { return .failure("no state dir") }
        let record: RevisionRecord
        do { record = try store.load(revision) } catch { return .failure("\(error)") }
        let old = ConfigLoader.parse(record.documents.filter { $0.origin == Self.applied }.map { ($0.yaml, "revision \(revision)", Self.applied) })
        if old.hasErrors { return respond(.rejected(old.diagnostics)) }
        // The config dir stays authoritative: only what was applied is rolled back.
        return respond(commit(reason: "rollback to \(revision)") { current in
            current.filter { $0.origin != Self.applied } + old.documents
        })
    }
}

extension StoredResource {
    static let kinds = ["ServiceEntry", "WorkloadEntry", "VirtualService", "DestinationRule", "PeerAuthentication", "AuthorizationPolicy",
                        "Telemetry", "MeshConfig"]

    /// What `weft get KIND [NAME] [-n NAMESPACE]` shows of `documents`, sorted by id.
    public static func select(_ documents: [Document], kind: String?, name: String?, namespace: String?) throws -> [StoredResource] {
        if let kind, kind.lowercased() != "all", !kinds.contains(where: { Agent.kindMatches(kind, $0) }) {
            throw AgentError("unknown kind \(kind) (one of \(kinds.joined(separator: ", ")), or all)")
        }
        return documents.sorted { $0.resource.id < $1.resource.id }.compactMap { d in
            let id = d.resource.id
            if let kind, kind.lowercased() != "all", !Agent.kindMatches(kind, id.kind) { return nil }
            if let name, name != id.name { return nil }
            if let namespace, namespace != id.namespace { return nil }
            return StoredResource(id: id, origin: d.origin, yaml: d.yaml)
        }
    }
}

extension DiffEntry {
    /// What applying `proposed` over `current` changes, resource by resource.
    public static func between(_ current: [Document], _ proposed: [Document]) -> [DiffEntry] {
        let byID = Dictionary(current.map { ($0.resource.id, $0) }, uniquingKeysWith: { a, _ in a })
        return proposed.map { d in
            let cur = byID[d.resource.id]
            // By the normalized YAML: the parsed resources also hold where each was read
            // from, which differs between a file and the agent's (or etcd's) copy.
            let change: Change = cur == nil ? .added : (cur!.yaml == d.yaml ? .unchanged : .changed)
            return DiffEntry(id: d.resource.id, change: change, current: cur?.yaml, proposed: d.yaml)
        }
    }
}
