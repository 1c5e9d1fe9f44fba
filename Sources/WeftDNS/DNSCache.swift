/// Upstream answers kept for as long as their TTLs say (RFC 1035 §7.4; negative answers for
/// their SOA's bound, RFC 2308 §5), served with the client's ID and their TTLs counted
/// down. Not thread-safe: one per DNS server, used on its event loop.
public struct DNSCache {
    /// What identifies an answer: the question, and what of the query shapes the answer
    /// (an OPT record in the reply only if the query had one; DNSSEC records only for DO;
    /// unvalidated answers for CD).
    public struct Key: Hashable, Sendable {
        public var question: DNSQuestion
        public var edns: Bool
        public var dnssecOK: Bool
        public var checkingDisabled: Bool

        public init(_ query: DNSMessage) {
            question = query.questions.first ?? DNSQuestion(name: DNSName(labels: []), type: 0)
            edns = query.edns != nil
            dnssecOK = query.edns?.dnssecOK ?? false
            checkingDisabled = query.flags & 0x0010 != 0
        }
    }

    struct Entry {
        var bytes: [UInt8]
        var ttlOffsets: [Int]
        var stored: UInt64
        var expires: UInt64
    }

    /// No answer is kept longer than this, whatever its TTL (unbound's cache-max-ttl
    /// default is a day; an hour bounds how stale a changed record can be served).
    public static let maxTTL: UInt32 = 3600

    private var entries: [Key: Entry] = [:]
    /// Most answers kept, and most bytes they may take together: what a workload asking
    /// for many large records can make the agent hold is bounded.
    public let capacity: Int
    public let maxBytes: Int
    public private(set) var bytes = 0

    public init(capacity: Int = 10_000, maxBytes: Int = 8 << 20) {
        self.capacity = max(1, capacity)
        self.maxBytes = max(512, maxBytes)
    }

    public var count: Int { entries.count }

    /// How long `response` may be kept, in seconds; nil if not at all: truncated, a
    /// failure (SERVFAIL, REFUSED, …), a negative answer without SOA, or a TTL of 0.
    public static func lifetime(of response: DNSMessage) -> UInt32? {
        guard !response.truncated else { return nil }
        let ttl: UInt32?
        switch response.rcode {
        case DNSRCode.noError.rawValue where !response.answers.isEmpty:
            ttl = response.records.map(\.ttl).min()
        case DNSRCode.noError.rawValue, DNSRCode.nxDomain.rawValue:
            // NODATA or NXDOMAIN: the SOA of the authority section bounds it.
            ttl = response.authorities.first { $0.type == DNSType.soa }.map { min($0.ttl, $0.soaMinimum ?? 0) }
        default:
            ttl = nil
        }
        guard let ttl, ttl > 0 else { return nil }
        return min(ttl, maxTTL)
    }

    /// Keeps `bytes` (which read as `response`) for `key`, if it may be kept.
    public mutating func store(_ key: Key, _ answer: [UInt8], _ response: DNSMessage, now: UInt64) {
        guard let life = Self.lifetime(of: response), answer.count <= maxBytes / 16 else { return }
        if let old = entries.removeValue(forKey: key) { bytes -= old.bytes.count }
        if entries.count >= capacity || bytes + answer.count > maxBytes { evict(now: now, making: answer.count) }
        entries[key] = Entry(bytes: answer, ttlOffsets: response.records.map(\.ttlOffset), stored: now,
                             expires: now + UInt64(life) * 1_000_000_000)
        bytes += answer.count
    }

    /// The answer for `key` with `id`, its TTLs less the seconds it has been kept; nil if
    /// there is none or it expired.
    public mutating func lookup(_ key: Key, id: UInt16, now: UInt64) -> [UInt8]? {
        guard let e = entries[key] else { return nil }
        guard now < e.expires else {
            entries[key] = nil
            bytes -= e.bytes.count
            return nil
        }
        var out = e.bytes
        out[0] = UInt8(id >> 8)
        out[1] = UInt8(id & 0xFF)
        let age = UInt32(min((now - e.stored) / 1_000_000_000, UInt64(UInt32.max)))
        for o in e.ttlOffsets {
            let ttl = UInt32(out[o]) << 24 | UInt32(out[o + 1]) << 16 | UInt32(out[o + 2]) << 8 | UInt32(out[o + 3])
            let left = ttl > age ? ttl - age : 0
            out[o] = UInt8(left >> 24)
            out[o + 1] = UInt8((left >> 16) & 0xFF)
            out[o + 2] = UInt8((left >> 8) & 0xFF)
            out[o + 3] = UInt8(left & 0xFF)
        }
        return out
    }

    /// Makes room for an answer of `size` bytes: drops what has expired, and if that does
    /// not free a tenth of the room, the entries closest to expiring until it does (one
    /// pass per tenth filled, not per insert).
    private mutating func evict(now: UInt64, making size: Int) {
        entries = entries.filter { $0.value.expires > now }
        bytes = entries.values.reduce(0) { $0 + $1.bytes.count }
        let keep = (count: capacity - max(1, capacity / 10), bytes: maxBytes - maxBytes / 10 - size)
        guard entries.count > keep.count || bytes > keep.bytes else { return }
        for (k, e) in entries.sorted(by: { $0.value.expires < $1.value.expires }) {
            guard entries.count > keep.count || bytes > keep.bytes else { break }
            entries[k] = nil
            bytes -= e.bytes.count
        }
    }
}
