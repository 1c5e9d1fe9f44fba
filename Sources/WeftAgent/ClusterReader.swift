import Foundation
import WeftConfig
import WeftStore

/// What operators read of a cluster: its history, its live nodes and whether a revision has
/// reached them (`weft history/status --cluster/apply --wait --etcd`).
public struct ClusterReader: Sendable {
    public let client: EtcdClient

    public init(client: EtcdClient) { self.client = client }

    /// Recent revisions, oldest first, with the current one marked.
    public func history() async throws -> [RevisionSummary] {
        let state = try await ClusterConfigState.read(client)
        let (kvs, _) = try await client.get(ClusterKeys.history, prefix: true)
        return try kvs.map { kv in
            let r = try ClusterKeys.decode(ClusterRevision.self, kv)
            return RevisionSummary(revision: r.revision, time: r.time, reason: "\(r.reason) by \(r.author)", resources: r.resources,
                                   contentHash: r.contentHash, current: r.revision == state.revision?.revision)
        }
    }

    /// One line of `weft status --cluster`.
    public struct NodeRow: Codable, Sendable {
        public var node: String
        public var status: ClusterNodeStatus?
        /// Cluster revisions the node is behind the current one.
        public var lag: UInt64
    }

    /// Every live node (a registration on a lease that is kept alive), with its report.
    public func nodes() async throws -> (current: UInt64, nodes: [NodeRow]) {
        let current = try await ClusterConfigState.read(client).revision?.revision ?? 0
        let registered = try await client.get(ClusterKeys.nodes, prefix: true).kvs.map { String($0.key.dropFirst(ClusterKeys.nodes.count)) }
        var reports: [String: ClusterNodeStatus] = [:]
        for kv in try await client.get(ClusterKeys.status, prefix: true).kvs {
            if let s = try? ClusterKeys.decode(ClusterNodeStatus.self, kv) { reports[s.node] = s }
        }
        return (current, registered.sorted().map { n in
            let applied = reports[n]?.appliedRevision ?? 0
            return NodeRow(node: n, status: reports[n], lag: current > applied ? current - applied : 0)
        })
    }

    /// How `apply --wait` ended.
    public struct WaitOutcome: Sendable {
        /// Live nodes that serve `revision` (or a later one).
        public var converged: [String]
        /// Nodes that refused it: name, reason, diagnostics.
        public var rejected: [(node: String, error: String, diagnostics: [String])]
        /// Live nodes that neither applied nor refused it in time, with the revision they serve.
        public var pending: [(node: String, applied: UInt64)]
        public var seconds: Double
        public var ok: Bool { rejected.isEmpty && pending.isEmpty }
    }

    /// Waits until every live node serves `revision` or has refused it, or `timeout` is
    /// over. Only nodes whose lease is alive count: a node that died drops out within its
    /// lease's TTL instead of holding everybody up. One list, then a watch on the nodes'
    /// registrations and reports: no polling, and the answer comes as the last report lands.
    public func wait(for revision: UInt64, timeout: Duration) async throws -> WaitOutcome {
        let clock = ContinuousClock()
        let start = clock.now
        let tracker = WaitTracker(revision: revision)
        let (nodes, atNodes) = try await client.get(ClusterKeys.nodes, prefix: true)
        let (reports, atReports) = try await client.get(ClusterKeys.status, prefix: true)
        await tracker.apply(nodes: nodes.map { EtcdEvent(kind: .put, kv: $0) })
        await tracker.apply(reports: reports.map { EtcdEvent(kind: .put, kv: $0) })
        if await !tracker.done {
            let client = self.client
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await client.watch([(ClusterKeys.nodes, atNodes + 1), (ClusterKeys.status, atReports + 1)]) { watch, events, _ in
                            if watch == 0 { await tracker.apply(nodes: events) } else { await tracker.apply(reports: events) }
                            if await tracker.done { throw WaitTracker.Done() }
                        }
                    }
                    group.addTask { try await Task.sleep(for: timeout) }
                    try await group.next()
                    group.cancelAll()
                }
            } catch is WaitTracker.Done {}
        }
        var outcome = await tracker.outcome()
        let elapsed = clock.now - start
        outcome.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return outcome
    }
}

/// What `wait` has seen of the live nodes and their reports.
actor WaitTracker {
    struct Done: Error {}
    let revision: UInt64
    var live: Set<String> = []
    var reports: [String: ClusterNodeStatus] = [:]

    init(revision: UInt64) { self.revision = revision }

    func apply(nodes events: [EtcdEvent]) {
        for e in events {
            let name = String(e.kv.key.dropFirst(ClusterKeys.nodes.count))
            if e.kind == .delete { live.remove(name) } else { live.insert(name) }
        }
    }

    func apply(reports events: [EtcdEvent]) {
        for e in events {
            let name = String(e.kv.key.dropFirst(ClusterKeys.status.count))
            if e.kind == .delete { reports[name] = nil } else if let s = try? ClusterKeys.decode(ClusterNodeStatus.self, e.kv) { reports[name] = s }
        }
    }

    var done: Bool { outcome().pending.isEmpty }

    func outcome() -> ClusterReader.WaitOutcome {
        var o = ClusterReader.WaitOutcome(converged: [], rejected: [], pending: [], seconds: 0)
        for node in live.sorted() {
            let s = reports[node]
            if let s, s.appliedRevision >= revision {
                o.converged.append(node)
            } else if let s, s.observedRevision >= revision, let error = s.error {
                o.rejected.append((node, error, s.diagnostics))
            } else {
                o.pending.append((node, s?.appliedRevision ?? 0))
            }
        }
        return o
    }
}
