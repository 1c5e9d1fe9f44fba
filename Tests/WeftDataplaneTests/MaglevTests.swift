import Testing
@testable import WeftDataplane

@Suite struct MaglevTests {
    static func names(_ n: Int) -> [String] { (0..<n).map { "10.250.\($0 / 250).\($0 % 250 + 1):8080" } }

    /// Promise 1: every backend's share of the table is within 1% of its weight share.
    @Test(arguments: [(3, [1, 2, 3]), (10, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), (7, [5, 1, 1, 10, 3, 2, 8]), (100, Array(repeating: 1, count: 100))])
    func sharesFollowWeights(n: Int, weights: [Int]) {
        let size = 16381
        let backends = zip(Self.names(n), weights).map { ($0, UInt32($1)) }
        let table = Maglev.table(backends: backends, size: size)
        #expect(table.count == size)
        var count = [Int](repeating: 0, count: n)
        for e in table { count[Int(e)] += 1 }
        let total = Double(weights.reduce(0, +))
        for i in 0..<n {
            let share = Double(count[i]) / Double(size)
            let want = Double(weights[i]) / total
            #expect(abs(share - want) <= 0.01, "backend \(i): share \(share) vs weight share \(want)")
        }
    }

    /// Promise 2: removing one of N backends remaps at most 1/N + 1% of the entries.
    /// Maglev keeps this while the table is large next to N (the paper sizes M ≫ N):
    /// measured here, M=16381 holds it up to N=33 and M=65521 up to N=150; at N=50 with
    /// M=16381, 3.1% moves (bound 3.0%) — README's Maglev section says how to size M.
    @Test(arguments: [(3, 16381), (5, 16381), (10, 16381), (33, 16381), (100, 65521), (150, 65521)])
    func removalRemapsLittle(n: Int, size: Int) {
        let all = Self.names(n).map { ($0, UInt32(1)) }
        let before = Maglev.table(backends: all, size: size).map { all[Int($0)].0 }
        for removed in [0, n / 2, n - 1] {
            var rest = all
            rest.remove(at: removed)
            let after = Maglev.table(backends: rest, size: size).map { rest[Int($0)].0 }
            let moved = zip(before, after).filter { $0 != $1 }.count
            let bound = (1.0 / Double(n) + 0.01) * Double(size)
            #expect(Double(moved) <= bound, "N=\(n) removing \(removed): \(moved) of \(size) entries moved, bound \(Int(bound))")
            // Entries of surviving backends that moved at all are the disruption beyond the minimum.
            #expect(moved >= before.filter { $0 == all[removed].0 }.count)
        }
    }

    @Test func tableDoesNotDependOnInputOrder() {
        let a = Self.names(20).map { ($0, UInt32(1)) }
        let t1 = Maglev.table(backends: a, size: 251).map { a[Int($0)].0 }
        let b = Array(a.reversed())
        let t2 = Maglev.table(backends: b, size: 251).map { b[Int($0)].0 }
        #expect(t1 == t2)
    }

    @Test func weightedTableIsExactAndInterleaved() {
        let t = WeightedTable.table(weights: [1, 2, 3])
        #expect(t.count == 6)
        #expect(t.filter { $0 == 2 }.count == 3 && t.filter { $0 == 1 }.count == 2)
        // Smooth WRR never puts the heaviest backend three times in a row.
        #expect(t != [2, 2, 2, 1, 1, 0])
        let big = WeightedTable.table(weights: [1_000_000, 3_000_001])
        #expect(big.count == WeightedTable.maxSize)
        let share = Double(big.filter { $0 == 0 }.count) / Double(big.count)
        #expect(abs(share - 0.25) < 0.001)
        #expect(WeightedTable.table(weights: []).isEmpty)
    }
}
