import Foundation
import WeftConfig

/// Chooses an endpoint of a cluster per its DestinationRule load balancer. One per event
/// loop (round-robin state is not shared between threads, as in Envoy's per-worker LB).
struct EndpointPicker {
    /// Smooth weighted round-robin state per cluster: endpoint → current weight.
    private var current: [ClusterKey: [SocketKey: Int]] = [:]

    /// `exclude`: endpoints not to use (tried by this request — Envoy's previous-hosts
    /// retry predicate — or ejected); ignored if it would exclude every endpoint.
    /// `hash`: the consistent-hash key's hash (client address or request attribute); nil
    /// when the request has no such attribute (then the pick is random, as Envoy's).
    /// `random`/`random2` in [0, 1); `load`: requests in flight per endpoint.
    mutating func pick(_ c: Cluster, exclude: Set<SocketKey> = [], hash: UInt64?, random: Double, random2: Double = 0.5,
                       load: (SocketKey) -> Int = { _ in 0 }) -> Endpoint? {
        // Nothing to exclude (a first attempt, nothing ejected): no filtered copy.
        var candidates = exclude.isEmpty ? c.endpoints : c.endpoints.filter { !exclude.contains($0.socket) }
        if candidates.isEmpty { candidates = c.endpoints }
        guard !candidates.isEmpty else { return nil }
        switch c.loadBalancer {
        case .random:
            return Self.weightedRandom(candidates, random)
        case .maglev, .requestHash:
            guard let hash else { return Self.weightedRandom(candidates, random) }
            return Self.rendezvous(candidates, hash)
        case .leastRequest:
            // Power of two choices (Envoy's default choice_count 2): fewer requests in
            // flight per unit of weight wins.
            let a = Self.weightedRandom(candidates, random)!, b = Self.weightedRandom(candidates, random2)!
            func score(_ e: Endpoint) -> Double { Double(load(e.socket) + 1) / Double(max(e.weight, 1)) }
            return score(b) < score(a) ? b : a
        case .roundRobin:
            var state = current[c.key] ?? [:]
            let total = candidates.reduce(0) { $0 + Int($1.weight) }
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

    static func weightedRandom(_ candidates: [Endpoint], _ random: Double) -> Endpoint? {
        pickWeighted(candidates, weight: { Int($0.weight) }, random: random)
    }

    /// Weighted rendezvous hashing: each endpoint scores weight / -ln(u), u uniform from
    /// hash(key, endpoint); the best score wins. The same key picks the same endpoint,
    /// and removing an endpoint moves only the keys it had.
    static func rendezvous(_ candidates: [Endpoint], _ hash: UInt64) -> Endpoint? {
        var best: (Endpoint, Double)?
        for e in candidates {
            let h = Hashing.splitmix(Hashing.fnv1a(e.socket.address.bytes + [UInt8(e.socket.port >> 8), UInt8(e.socket.port & 0xff)],
                                                   seed: hash ^ 0x9e37_79b9_7f4a_7c15))
            let u = (Double(h >> 11) + 0.5) / Double(1 << 53)
            let score = Double(max(e.weight, 1)) / -log(u)
            if best == nil || score > best!.1 { best = (e, score) }
        }
        return best?.0
    }
}
