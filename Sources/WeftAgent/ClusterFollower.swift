import Foundation
import Logging
import WeftConfig
import WeftStore

/// The agent's side of cluster mode: follows the config in etcd (one list, then one watch
/// from the revision after it; a list again when the watch falls behind compaction),
/// commits each cluster revision through the agent's one commit path, and keeps this node's
/// registration and status on a lease. etcd being away changes nothing that is served: the
/// last committed revision stays in force (and is persisted, so a restart serves it too).
actor ClusterFollower {
    let agent: Agent
    let client: EtcdClient
    let logger: Logger
    /// This node's registration as last written.
    var node: ClusterNode
    /// The lease's TTL (seconds) and how often it is renewed.
    let ttl: Int64
    var status: ClusterNodeStatus
    /// The config as the watch has brought it so far.
    var state: ClusterConfigState?
    var lease: Int64?
    /// The last outage logged (each one once, not at every retry).
    var outage: String?
    /// Where the watches resume: the store revision after the last one each delivered.
    var watchFrom: Int64 = 0
    var nodesFrom: Int64 = 0

    init(agent: Agent, client: EtcdClient, node: ClusterNode, appliedRevision: UInt64, ttl: Int64 = 30) {
        self.agent = agent
        self.client = client
        logger = agent.logger
        self.node = node
        self.ttl = ttl
        status = ClusterNodeStatus(node: node.node, observedRevision: appliedRevision, appliedRevision: appliedRevision, appliedTime: nil,
                                   error: nil, diagnostics: [], localRevision: 0, updated: Date())
    }

    /// Follows the config until cancelled.
    func follow() async {
        var needList = true
        while !Task.isCancelled {
            do {
                if needList {
                    let s = try await ClusterConfigState.read(client)
                    state = s
                    watchFrom = s.storeRevision + 1
                    let (nodes, at) = try await client.get(ClusterKeys.nodes, prefix: true)
                    registered(nodes.map { EtcdEvent(kind: .put, kv: $0) }, listed: true)
                    nodesFrom = at + 1
                    needList = false
                    reachable()
                    await applyState()
                }
                // One stream, two watchers: the config, and the other nodes' registrations
                // (whose CA roots the tunnel trusts).
                try await client.watch([(ClusterKeys.config, watchFrom), (ClusterKeys.nodes, nodesFrom)]) { watch, events, revision in
                    if watch == 0 {
                        await self.watched(events, through: revision)
                    } else {
                        await self.registrationsWatched(events, through: revision)
                    }
                }
            } catch EtcdError.compacted(let compact) {
                logger.warning("the etcd watch fell behind compaction (store revision \(compact)); listing the config again",
                               metadata: ["component": "cluster"])
                needList = true
            } catch is CancellationError {
                return
            } catch {
                unreachable(error)
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    private func watched(_ events: [EtcdEvent], through revision: Int64) async {
        reachable()
        watchFrom = revision + 1
        guard var s = state else { return }
        var newRevision = false
        for e in events {
            if e.kv.key == ClusterKeys.revision {
                newRevision = true
                s.revisionModRevision = e.kind == .delete ? 0 : e.kv.modRevision
                if e.kind == .delete {
                    s.revision = nil
                } else {
                    do { s.revision = try ClusterKeys.decode(ClusterRevision.self, e.kv) } catch {
                        // Not weft's record (another tool wrote the key): nothing to apply.
                        logger.error("\(error); still serving cluster revision \(status.appliedRevision)", metadata: ["component": "cluster"])
                        s.revision = nil
                    }
                }
            } else if e.kind == .delete {
                s.resources[e.kv.key] = nil
            } else {
                s.resources[e.kv.key] = e.kv.text
            }
            s.storeRevision = e.kv.modRevision
        }
        state = s
        // A writer moves the revision key in the same transaction as the resources, and a
        // transaction's events arrive together: the config is whole exactly now.
        if newRevision { await applyState() }
    }

    private func registrationsWatched(_ events: [EtcdEvent], through revision: Int64) {
        nodesFrom = revision + 1
        registered(events, listed: false)
    }

    /// Other nodes' registrations came or went: their CA roots join or leave the tunnel's
    /// trust (NodeRoots: only roots bound to the node that registered them).
    private func registered(_ events: [EtcdEvent], listed: Bool) {
        var others: [(String, ClusterNode?)] = []
        for e in events {
            let name = String(e.kv.key.dropFirst(ClusterKeys.nodes.count))
            if name == node.node { continue }
            if e.kind == .delete {
                others.append((name, nil))
            } else if let n = try? ClusterKeys.decode(ClusterNode.self, e.kv), n.node == name {
                others.append((name, n))
            } else {
                logger.warning("etcd key \(e.kv.key) is not a weft node registration; ignored", metadata: ["component": "cluster"])
            }
        }
        if others.isEmpty && !listed { return }
        agent.nodeRegistrations(others, replacingAll: listed)
    }

    /// Commits the cluster's config as it stands and reports the outcome.
    private func applyState() async {
        guard let s = state else { return }
        guard let record = s.revision else {
            // No config written to this cluster yet: nothing to follow, nothing to report.
            return
        }
        status.observedRevision = record.revision
        let parsed = s.parsed()
        let outcome = agent.commitCluster(parsed, revision: record.revision)
        switch outcome {
        case .committed(let snap, _), .unchanged(let snap):
            status.appliedRevision = record.revision
            status.appliedTime = Date()
            status.error = nil
            status.diagnostics = []
            status.localRevision = snap.revision
            logger.info("cluster revision \(record.revision) in force (local revision \(snap.revision))", metadata: ["component": "cluster"])
        case .rejected(let diagnostics):
            reject(record.revision, "rejected by validation on this node", diagnostics)
        case .failed(let message, let diagnostics):
            reject(record.revision, message, diagnostics)
        }
        status.updated = Date()
        await writeStatus()
    }

    private func reject(_ revision: UInt64, _ message: String, _ diagnostics: [Diagnostic]) {
        status.error = message
        status.diagnostics = diagnostics.filter { $0.severity == .error }.map(\.description)
        for d in diagnostics where d.severity == .error { logger.error("\(d)", metadata: ["component": "cluster"]) }
        logger.error("cluster revision \(revision) not applied: \(message); still serving cluster revision \(status.appliedRevision)",
                     metadata: ["component": "cluster"])
    }

    /// Keeps this node registered and its status written, on a lease renewed every ttl/3:
    /// when the agent dies, etcd drops both within the TTL, so nobody waits on it.
    func register() async {
        while !Task.isCancelled {
            do {
                let id = try await client.grantLease(ttl: ttl)
                lease = id
                node = agent.registration()
                try await client.put(ClusterKeys.nodes + node.node, ClusterKeys.encode(node), lease: id)
                await writeStatus()
                reachable()
                let (client, every) = (client, Duration.seconds(max(1, ttl / 3)))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await client.keepAlive(id, every: every) }
                    group.addTask { try await self.refreshRegistration(on: id) }
                    try await group.next()
                    group.cancelAll()
                }
            } catch is CancellationError {
                return
            } catch {
                lease = nil
                unreachable(error)
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Writes the registration again when it changed: a CA rotation (a new root bound to
    /// this node in --trust-bundle, then the switch of --ca) reaches the peers this way.
    private func refreshRegistration(on id: Int64) async throws {
        while true {
            try await Task.sleep(for: .seconds(2))
            let now = agent.registration()
            if now != node {
                try await client.put(ClusterKeys.nodes + now.node, ClusterKeys.encode(now), lease: id)
                node = now
                logger.info("registration updated: \(now.caCertificates.count) CA root(s), addresses \(now.addresses.joined(separator: ", "))",
                            metadata: ["component": "cluster"])
            }
        }
    }

    private func writeStatus() async {
        guard let id = lease else { return }
        do { try await client.put(ClusterKeys.status + node.node, ClusterKeys.encode(status), lease: id) } catch {
            unreachable(error)
        }
    }

    /// On a clean stop the node leaves at once (its keys go with the lease).
    func leave() async {
        guard let id = lease else { return }
        lease = nil
        try? await client.revokeLease(id)
    }

    private func unreachable(_ error: Error) {
        let text = "\(error)"
        if text != outage {
            logger.warning("\(text); serving cluster revision \(status.appliedRevision) until etcd answers", metadata: ["component": "cluster"])
        }
        outage = text
    }

    private func reachable() {
        if outage != nil { logger.info("etcd reachable again at \(client.endpoints.text)", metadata: ["component": "cluster"]) }
        outage = nil
    }
}
