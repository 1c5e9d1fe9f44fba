import Foundation
import WeftStore

/// What scripts/bench cluster runs besides real agents (`weft bench …`, hidden).
public enum ClusterBenchmarks {
    /// `count` simulated nodes: each registers, watches the revision record on a stream of
    /// its own, and reports every new revision as applied — an agent without the datapath,
    /// loading etcd with that many watchers, notifications and status writes. They do not
    /// take the resources themselves: on a 2-core machine, decoding 200 copies of a
    /// 10,000-resource revision (~4 MB each) would measure this machine's CPU, not etcd.
    public static func watchers(_ client: EtcdClient, count: Int, prefix: String) async throws {
        let lease = try await client.grantLease(ttl: 30)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.keepAlive(lease, every: .seconds(10)) }
            for i in 0..<count {
                group.addTask { try await SimulatedNode(name: "\(prefix)-\(i)", lease: lease).run(client) }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    actor SimulatedNode {
        let name: String
        let lease: Int64
        var status: ClusterNodeStatus

        init(name: String, lease: Int64) {
            self.name = name
            self.lease = lease
            status = ClusterNodeStatus(node: name, observedRevision: 0, appliedRevision: 0, appliedTime: nil, error: nil, diagnostics: [],
                                       localRevision: 0, updated: Date())
        }

        func run(_ client: EtcdClient) async throws {
            let me = ClusterNode(node: name, addresses: [], tunnelPort: 0, caCertificates: [], agentStarted: Date())
            try await client.put(ClusterKeys.nodes + name, ClusterKeys.encode(me), lease: lease)
            let state = try await ClusterConfigState.read(client)
            try await report(client, state.revision?.revision ?? 0)
            try await client.watch(prefix: ClusterKeys.revision, from: state.storeRevision + 1) { events, _ in
                for e in events where e.kv.key == ClusterKeys.revision && e.kind == .put {
                    if let r = try? ClusterKeys.decode(ClusterRevision.self, e.kv) { try await self.report(client, r.revision) }
                }
            }
        }

        func report(_ client: EtcdClient, _ revision: UInt64) async throws {
            status.observedRevision = revision
            status.appliedRevision = revision
            status.appliedTime = Date()
            status.updated = Date()
            try await client.put(ClusterKeys.status + name, ClusterKeys.encode(status), lease: lease)
        }
    }

    /// etcd's own write latency, the floor under any convergence time: `count` puts of
    /// `bytes` each, one at a time; returns the round trips in milliseconds.
    public static func putLatency(_ client: EtcdClient, bytes: Int, count: Int) async throws -> [Double] {
        let value = [UInt8](repeating: 0x61, count: bytes)
        var out: [Double] = []
        let clock = ContinuousClock()
        for i in 0..<count {
            let t = clock.now
            try await client.put("weft/bench/put-\(i % 16)", value)
            let d = clock.now - t
            out.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
        }
        try await client.delete("weft/bench/", prefix: true)
        return out
    }
}
