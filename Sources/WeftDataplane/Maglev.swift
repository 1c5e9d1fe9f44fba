/// WeftDataplane: turns Snapshots into BPF map contents (services, backends, selection
/// tables, workloads), loads/attaches/adopts the programs, and reads the pinned maps back
/// for inspection.

/// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
/// Network Load Balancer", NSDI 2016), with weights.
///
/// Each backend walks its own permutation of the table (offset, skip derived from two
/// hashes of its name) and claims the next free slot on its turn. Weights set how many
/// turns a backend gets per round: a backend with weight w takes w/max(weight) of a turn
/// each round, so its share of the table follows its weight share.
public enum Maglev {
    /// Builds a table of `size` entries (a prime); entry i is an index into `backends`.
    /// The result depends only on the set of names and weights, not on their order.
    public static func table(backends: [(name: String, weight: UInt32)], size: Int) -> [UInt32] {
        precondition(size >= 1)
        let order = backends.indices.sorted { backends[$0].name < backends[$1].name }.filter { backends[$0].weight > 0 }
        guard !order.isEmpty else { return [] }
        let m = UInt64(size)
        var offset = [UInt64](), skip = [UInt64]()
        for i in order {
            let h = fnv1a(backends[i].name)
            offset.append(mix64(h) % m)
            skip.append(m > 1 ? mix64(h ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1 : 1)
        }
        let maxWeight = UInt64(order.map { backends[$0].weight }.max()!)
        var next = [UInt64](repeating: 0, count: order.count)
        var credit = [UInt64](repeating: 0, count: order.count)
        var entry = [Int32](repeating: -1, count: size)
        var filled = 0
        while filled < size {
            for j in order.indices {
                credit[j] += UInt64(backends[order[j]].weight)
                guard credit[j] >= maxWeight else { continue }
                credit[j] -= maxWeight
                var c = (offset[j] + next[j] * skip[j]) % m
                while entry[Int(c)] >= 0 {
                    next[j] += 1
                    c = (offset[j] + next[j] * skip[j]) % m
                }
                entry[Int(c)] = Int32(order[j])
                next[j] += 1
                filled += 1
                if filled == size { break }
            }
        }
        return entry.map { UInt32($0) }
    }

    /// FNV-1a, 64 bit: a stable hash (Swift's Hasher is seeded per process, and tables must
    /// come out the same after an agent restart).
    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// splitmix64's finalizer: FNV alone leaves the low bits poorly mixed.
    static func mix64(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// Selection tables for RANDOM and ROUND_ROBIN: each backend appears in proportion to its
/// weight, interleaved by smooth weighted round robin (as nginx does), so stepping
/// through the table round-robin never sends a burst to one backend.
public enum WeightedTable {
    /// Largest table; weights whose reduced sum exceeds it are scaled (error < 1/4096).
    public static let maxSize = 4096

    /// Entry i is an index into `weights`.
    public static func table(weights: [UInt32]) -> [UInt32] {
        let active = weights.indices.filter { weights[$0] > 0 }
        guard !active.isEmpty else { return [] }
        var counts = reduced(active.map { UInt64(weights[$0]) })
        let total = counts.reduce(0, +)
        if total > UInt64(maxSize) { counts = scaled(counts, to: maxSize) }
        let sum = Int64(counts.reduce(0, +))
        var current = [Int64](repeating: 0, count: counts.count)
        var out: [UInt32] = []
        out.reserveCapacity(Int(sum))
        for _ in 0..<sum {
            var best = 0
            for j in counts.indices {
                current[j] += Int64(counts[j])
                if current[j] > current[best] { best = j }
            }
            current[best] -= sum
            out.append(UInt32(active[best]))
        }
        return out
    }

    static func reduced(_ w: [UInt64]) -> [UInt64] {
        func gcd(_ a: UInt64, _ b: UInt64) -> UInt64 { b == 0 ? a : gcd(b, a % b) }
        let g = w.reduce(0, gcd)
        return w.map { $0 / max(g, 1) }
    }

    /// Largest-remainder apportionment of `size` slots, every backend keeping ≥ 1.
    static func scaled(_ w: [UInt64], to size: Int) -> [UInt64] {
        let total = Double(w.reduce(0, +))
        let exact = w.map { Double($0) * Double(size) / total }
        var counts = exact.map { max(UInt64($0.rounded(.down)), 1) }
        var left = size - Int(counts.reduce(0, +))
        let byRemainder = exact.indices.sorted { exact[$0] - exact[$0].rounded(.down) > exact[$1] - exact[$1].rounded(.down) }
        var k = 0
        while left > 0 && !byRemainder.isEmpty {
            counts[byRemainder[k % byRemainder.count]] += 1
            left -= 1
            k += 1
        }
        return counts
    }
}
