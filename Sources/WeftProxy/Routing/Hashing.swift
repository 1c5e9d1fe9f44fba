/// The proxy's hash functions, in one place: FNV-1a for keys (addresses, header values,
/// cookies) and the SplitMix64 finalizer to spread them (also the generator's output step).
enum Hashing {
    static func fnv1a<S: Sequence>(_ bytes: S, seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 where S.Element == UInt8 {
        var h = seed
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    static func fnv1a(_ s: String) -> UInt64 { fnv1a(s.utf8) }

    static func splitmix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// SplitMix64: a fast, well-mixed generator for load-balancing draws (not for secrets).
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        defer { state &+= 0x9e37_79b9_7f4a_7c15 }
        return Hashing.splitmix(state)
    }
}
