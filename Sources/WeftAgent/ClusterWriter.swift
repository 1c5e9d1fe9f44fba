import Foundation
import WeftConfig
import WeftStore

/// `weft apply/delete/rollback --etcd`: a whole config revision in one etcd transaction,
/// compared and swapped on the revision key, after the validation the admin socket runs.
/// Two writers racing: one commits, the other is told and writes nothing.
public struct ClusterWriter: Sendable {
    public let client: EtcdClient
    /// The mesh root namespace, as the agents validate with (--root-namespace).
    public var rootNamespace: String
    /// History entries kept for rollback.
    public var keep: UInt64 = 20

    public init(client: EtcdClient, rootNamespace: String) {
        self.client = client
        self.rootNamespace = rootNamespace
    }

    public struct Result: Sendable {
        public var revision: UInt64
        public var changed: Bool
        public var warnings: [Diagnostic]
    }

    /// Adds or replaces the resources of `files`.
    public func apply(_ files: [SourceFile]) async throws -> Result {
        let pushed = ConfigLoader.parse(files.map { ($0.text, $0.path, ClusterKeys.origin) })
        if pushed.hasErrors { throw ClusterError("rejected: nothing was written", diagnostics: pushed.diagnostics) }
        if pushed.documents.isEmpty { throw ClusterError("nothing to apply: the files hold no resources") }
        return try await commit(reason: "apply") { current, _ in
            let replaced = Set(pushed.documents.map(\.resource.id))
            return current.filter { !replaced.contains($0.resource.id) } + pushed.documents
        }
    }

    /// Removes the resources named; each must exist.
    public func delete(_ ids: [ResourceID]) async throws -> Result {
        if ids.isEmpty { throw ClusterError("nothing to delete") }
        return try await commit(reason: "delete") { current, _ in
            let have = Set(current.map(\.resource.id))
            let missing = ids.filter { !have.contains($0) }
            if !missing.isEmpty { throw ClusterError(missing.map { "\($0) does not exist" }.joined(separator: "; ") + "; nothing was written") }
            let gone = Set(ids)
            return current.filter { !gone.contains($0.resource.id) }
        }
    }

    /// Makes the resources of revision `number` the config again (as a new revision).
    public func rollback(to number: UInt64) async throws -> Result {
        let (kvs, _) = try await client.get(ClusterKeys.history(number))
        guard let kv = kvs.first else { throw ClusterError("revision \(number) is not in the cluster's history (see `weft history --etcd`)") }
        _ = try ClusterKeys.decode(ClusterRevision.self, kv)
        // The history key was created by the revision's own transaction: its creation is
        // the store revision at which the revision's resources can be read back.
        let past: ClusterConfigState
        do { past = try await ClusterConfigState.read(client, at: kv.createRevision) } catch EtcdError.refused(let m) where m.contains("compacted") {
            throw ClusterError("revision \(number) is older than etcd keeps (its history was compacted); apply its files again instead")
        }
        let parsed = past.parsed()
        if parsed.hasErrors { throw ClusterError("revision \(number) no longer parses", diagnostics: parsed.diagnostics) }
        return try await commit(reason: "rollback to \(number)") { _, _ in parsed.documents }
    }

    /// Reads the cluster's config, lets `change` compute the next document set, validates it
    /// whole, and writes the difference with the new revision record in one transaction
    /// that holds only if nobody committed in between.
    func commit(reason: String, _ change: ([Document], ClusterConfigState) throws -> [Document]) async throws -> Result {
        let state = try await ClusterConfigState.read(client)
        let currentParsed = state.parsed()
        if currentParsed.hasErrors {
            throw ClusterError("the config in etcd does not parse (written by another tool?); fix or delete the keys named", diagnostics: currentParsed.diagnostics)
        }
        let docs = try change(currentParsed.documents, state)
        let number = (state.revision?.revision ?? 0) + 1
        let nodes = (try? await client.get(ClusterKeys.nodes, prefix: true).kvs.map { String($0.key.dropFirst(ClusterKeys.nodes.count)) }) ?? []
        let snapshot: Snapshot
        do {
            snapshot = try ConfigLoader.snapshot(.init(documents: docs, diagnostics: []), revision: number,
                                                 options: ValidationOptions(rootNamespace: rootNamespace, knownNodes: Set(nodes)))
        } catch {
            throw ClusterError("rejected: nothing was written (still revision \(state.revision?.revision ?? 0))", diagnostics: error.diagnostics)
        }
        var next: [String: String] = [:]
        for d in docs { next[ClusterKeys.resource(d.resource.id)] = d.yaml }
        var ops: [EtcdOp] = []
        for (key, yaml) in next.sorted(by: { $0.key < $1.key }) where state.resources[key] != yaml {
            ops.append(.put(key, Array(yaml.utf8)))
        }
        for key in state.resources.keys.sorted() where next[key] == nil { ops.append(.delete(key)) }
        if ops.isEmpty, let current = state.revision {
            return Result(revision: current.revision, changed: false, warnings: snapshot.warnings)
        }
        let record = ClusterRevision(revision: number, time: Date(), reason: reason, contentHash: snapshot.contentHash,
                                     resources: docs.count, author: Self.author)
        ops.append(.put(ClusterKeys.revision, ClusterKeys.encode(record)))
        ops.append(.put(ClusterKeys.history(number), ClusterKeys.encode(record)))
        if number > keep { ops.append(.delete(ClusterKeys.history(number - keep))) }
        let outcome: (succeeded: Bool, revision: Int64)
        do {
            outcome = try await client.txn(if: [.modRevision(ClusterKeys.revision, equals: state.revisionModRevision)], then: ops)
        } catch EtcdError.refused(let m) {
            throw ClusterError(Self.explain(m, operations: ops.count))
        }
        guard outcome.succeeded else {
            let now = try? await ClusterConfigState.read(client)
            throw ClusterError("conflict: revision \(state.revision?.revision ?? 0) was replaced by revision \(now?.revision?.revision ?? 0) (\(now?.revision?.author ?? "another writer")) while this \(reason) was prepared; nothing was written — run it again")
        }
        return Result(revision: number, changed: true, warnings: snapshot.warnings)
    }

    /// etcd's limits, named with the member flags that raise them.
    static func explain(_ message: String, operations: Int) -> String {
        if message.contains("too many operations") {
            return "etcd refused the transaction: \(operations) operations, more than its --max-txn-ops allows (default 128); raise it on every member, or apply fewer resources at once. Nothing was written"
        }
        if message.contains("too large") {
            return "etcd refused the transaction as too large for its --max-request-bytes (default 1.5 MiB); raise it on every member, or apply fewer resources at once. Nothing was written"
        }
        return "etcd refused the transaction: \(message). Nothing was written"
    }

    static var author: String {
        let user = ProcessInfo.processInfo.environment["SUDO_USER"] ?? ProcessInfo.processInfo.environment["USER"] ?? "uid\(getuid())"
        return "\(user)@\(ProcessInfo.processInfo.hostName)"
    }
}
