import WeftConfig

/// Chooses an endpoint of a cluster per its DestinationRule load balancer. One per event
/// loop (round-robin state is not shared between threads, as in Envoy's per-worker LB).
struct EndpointPicker {
    /// Smooth weighted round-robin state per cluster: endpoint → current weight.
    private var current: [ClusterKey: [SocketKey: Int]] = [:]

    /// `exclude`: endpoints already tried by this request (Envoy's previous-hosts retry
    /// predicate, which Istio configures); ignored if it would exclude every endpoint.
    /// `sourceHash` feeds consistent hashing on the client address.
    mutating func pick(_ c: Cluster, exclude: Set<SocketKey> = [], sourceHash: UInt64, random: Double) -> Endpoint? {
        var candidates = c.endpoints.filter { !exclude.contains($0.socket) }
        if candidates.isEmpty { candidates = c.endpoints }
        guard !candidates.isEmpty else { return nil }
        let total = candidates.reduce(0) { $0 + Int($1.weight) }
        switch c.loadBalancer {
        case .random:
            var point = random * Double(total)
            for e in candidates {
                point -= Double(e.weight)
                if point < 0 { return e }
            }
            return candidates.last
        case .maglev:
            // Same client, same endpoint while the endpoint set is unchanged.
            var point = Int(sourceHash % UInt64(max(total, 1)))
            for e in candidates {
                point -= Int(e.weight)
                if point < 0 { return e }
            }
            return candidates.last
        case .roundRobin:
            var state = current[c.key] ?? [:]
            var best: Endpoint?
            for e in candidates {
                let w = state[e.socket, default: 0] + Int(e.weight)
                state[e.socket] = w
                if best == nil || w > state[best!.socket]! { best = e }
            }
            state[best!.socket]! -= total
            current[c.key] = state
            return best
        }
    }
}
