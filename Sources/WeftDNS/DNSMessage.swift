/// WeftDNS: the node's DNS for its workloads — the wire format (RFC 1035, EDNS per RFC
/// 6891), the names the mesh answers itself, and a forwarder with a cache for the rest.
///
/// The wire format is weft's own: no maintained Swift package parses DNS messages for a
/// server (swift-nio has none; swift-async-dns-resolver is a client over c-ares). It is
/// strict and bounded: every length is checked against the message, a name is at most 255
/// bytes and 127 labels, and a compression pointer must point before the part of the name
/// it continues, so no input loops or reads outside the message (fuzz-dns).

/// Record types weft looks at (others pass through as opaque data).
public enum DNSType {
    public static let a: UInt16 = 1
    public static let ns: UInt16 = 2
    public static let cname: UInt16 = 5
    public static let soa: UInt16 = 6
    public static let ptr: UInt16 = 12
    public static let aaaa: UInt16 = 28
    public static let opt: UInt16 = 41
    public static let any: UInt16 = 255
}

/// The classes weft answers for: Internet only.
public enum DNSClass {
    public static let internet: UInt16 = 1
}

/// Response codes (the low 4 bits of the header; BADVERS needs EDNS's extended bits).
public enum DNSRCode: UInt16, Sendable {
    case noError = 0, formErr = 1, servFail = 2, nxDomain = 3, notImp = 4, refused = 5
    case badVers = 16
}

/// Why a message was not read: one short reason, for logs and counters.
public struct DNSWireError: Error, Equatable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
    static let truncated = DNSWireError("message ends inside a field")
    static let badLabel = DNSWireError("label type 0x40 or 0x80 (reserved)")
    static let badPointer = DNSWireError("compression pointer does not point back")
    static let nameTooLong = DNSWireError("name longer than 255 bytes")
}

/// A domain name: its labels as received (case kept, for the answer); compared and hashed
/// without regard to ASCII case, as DNS compares names.
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    public private(set) var labels: [[UInt8]]

    public init(labels: [[UInt8]]) {
        self.labels = labels
    }

    /// From text ("reviews.default.svc.cluster.local", a trailing dot allowed); nil if a
    /// label is empty or longer than 63 bytes, or the name longer than 255.
    public init?(_ text: String) {
        var t = Substring(text)
        if t.hasSuffix(".") { t = t.dropLast() }
        if t.isEmpty {
            labels = []
            return
        }
        let parts = t.split(separator: ".", omittingEmptySubsequences: false).map { Array($0.utf8) }
        guard parts.allSatisfy({ !$0.isEmpty && $0.count <= 63 }) else { return nil }
        labels = parts
        guard wireLength <= 255 else { return nil }
    }

    /// Bytes on the wire, uncompressed: a length byte per label and the root's zero.
    public var wireLength: Int { labels.reduce(1) { $0 + 1 + $1.count } }

    /// Lowercase dotted text without the trailing dot: how tables key names. Bytes that
    /// are not printable ASCII (or are dots inside a label) are written \DDD, as dig does,
    /// so two different names never read the same.
    public var key: String {
        var s = ""
        for (i, l) in labels.enumerated() {
            if i > 0 { s += "." }
            for c in l {
                let lower = Self.fold(c)
                if lower > 32 && lower < 127 && lower != 46 && lower != 92 {
                    s.unicodeScalars.append(Unicode.Scalar(lower))
                } else {
                    s += "\\" + String(repeating: "0", count: 3 - String(lower).count) + String(lower)
                }
            }
        }
        return s
    }

    public var description: String { labels.isEmpty ? "." : key }

    public static func == (a: DNSName, b: DNSName) -> Bool {
        guard a.labels.count == b.labels.count else { return false }
        for (x, y) in zip(a.labels, b.labels) {
            guard x.count == y.count else { return false }
            for (p, q) in zip(x, y) where fold(p) != fold(q) { return false }
        }
        return true
    }

    public func hash(into h: inout Hasher) {
        h.combine(labels.count)
        for l in labels {
            h.combine(l.count)
            for c in l { h.combine(Self.fold(c)) }
        }
    }

    /// ASCII lowercase; other bytes as they are.
    static func fold(_ c: UInt8) -> UInt8 { c >= 65 && c <= 90 ? c + 32 : c }

    /// The name with `suffix` taken off its end, if it ends so (case-insensitively).
    public func dropping(suffix: DNSName) -> DNSName? {
        guard suffix.labels.count <= labels.count else { return nil }
        let head = labels.count - suffix.labels.count
        guard DNSName(labels: Array(labels[head...])) == suffix else { return nil }
        return DNSName(labels: Array(labels[..<head]))
    }
}

/// One question: what is asked about which name.
public struct DNSQuestion: Hashable, Sendable {
    public var name: DNSName
    public var type: UInt16
    public var klass: UInt16

    public init(name: DNSName, type: UInt16, klass: UInt16 = DNSClass.internet) {
        self.name = name
        self.type = type
        self.klass = klass
    }
}

/// A resource record as read. `rdata` is raw: names inside it (CNAME, SOA, …) may be
/// compression pointers into the message it came in, so it is only meaningful there.
public struct DNSRecord: Hashable, Sendable {
    public var name: DNSName
    public var type: UInt16
    public var klass: UInt16
    public var ttl: UInt32
    public var rdata: [UInt8]
    /// Where the TTL field sits in the message (a cached message is aged in place).
    public var ttlOffset: Int
    /// For SOA: its MINIMUM field, which bounds how long a negative answer is cached
    /// (RFC 2308 §5).
    public var soaMinimum: UInt32?
}

/// The EDNS pseudo-record (OPT) of a message.
public struct EDNS: Hashable, Sendable {
    /// The largest UDP response the sender takes (below 512 counts as 512).
    public var udpPayloadSize: UInt16
    public var extendedRCode: UInt8
    public var version: UInt8
    /// DNSSEC OK.
    public var dnssecOK: Bool
}

/// A whole message, read strictly.
public struct DNSMessage: Sendable {
    public var id: UInt16
    public var flags: UInt16
    public var questions: [DNSQuestion]
    public var answers: [DNSRecord]
    public var authorities: [DNSRecord]
    /// The additional section without the OPT record (that is `edns`).
    public var additionals: [DNSRecord]
    public var edns: EDNS?

    public var isResponse: Bool { flags & 0x8000 != 0 }
    public var opcode: UInt8 { UInt8((flags >> 11) & 0xF) }
    public var truncated: Bool { flags & 0x0200 != 0 }
    public var recursionDesired: Bool { flags & 0x0100 != 0 }
    /// The response code, with EDNS's upper bits when there is an OPT record.
    public var rcode: UInt16 { UInt16(flags & 0xF) | (UInt16(edns?.extendedRCode ?? 0) << 4) }

    /// Every record that has a TTL (OPT's field is not one).
    public var records: [DNSRecord] { answers + authorities + additionals }

    /// Reads `bytes` as one message: the header, exactly the records its counts announce,
    /// and nothing after them. At most one OPT record, in the additional section, owned
    /// by the root.
    public init(parsing bytes: [UInt8]) throws {
        var r = Reader(bytes)
        id = try r.u16()
        flags = try r.u16()
        let qd = Int(try r.u16()), an = Int(try r.u16()), ns = Int(try r.u16()), ar = Int(try r.u16())
        // A question takes at least 5 bytes and a record 11: counts the message cannot
        // hold are refused before any array is sized by them.
        guard qd * 5 + (an + ns + ar) * 11 <= bytes.count - 12 else { throw DNSWireError.truncated }
        questions = []
        for _ in 0..<qd {
            let name = try r.name()
            questions.append(DNSQuestion(name: name, type: try r.u16(), klass: try r.u16()))
        }
        answers = try (0..<an).map { _ in try r.record() }
        authorities = try (0..<ns).map { _ in try r.record() }
        additionals = []
        edns = nil
        for _ in 0..<ar {
            let rec = try r.record()
            guard rec.type == DNSType.opt else {
                additionals.append(rec)
                continue
            }
            guard edns == nil else { throw DNSWireError("two OPT records") }
            guard rec.name.labels.isEmpty else { throw DNSWireError("OPT record not owned by the root") }
            edns = EDNS(udpPayloadSize: rec.klass, extendedRCode: UInt8(rec.ttl >> 24), version: UInt8((rec.ttl >> 16) & 0xFF),
                        dnssecOK: rec.ttl & 0x8000 != 0)
        }
        if answers.contains(where: { $0.type == DNSType.opt }) || authorities.contains(where: { $0.type == DNSType.opt }) {
            throw DNSWireError("OPT record outside the additional section")
        }
        guard r.offset == bytes.count else { throw DNSWireError("\(bytes.count - r.offset) byte(s) after the last record") }
        // A name read through a pointer must not be made of TTL bytes — not a label, not
        // its end, not a further pointer: the cache rewrites TTLs as answers age, which
        // would change such a name (no compressor writes one; found by fuzz-dns).
        var ttlBytes = [Bool](repeating: false, count: bytes.count)
        for rec in records { for i in rec.ttlOffset..<(rec.ttlOffset + 4) { ttlBytes[i] = true } }
        for range in r.pointedLabels where range.contains(where: { ttlBytes[$0] }) {
            throw DNSWireError("a compressed name points into a record's TTL")
        }
    }

    /// The header's ID and flags, if `bytes` has a header at all (an unreadable query is
    /// still answered FORMERR with its ID).
    public static func header(of bytes: [UInt8]) -> (id: UInt16, flags: UInt16)? {
        guard bytes.count >= 12 else { return nil }
        return (UInt16(bytes[0]) << 8 | UInt16(bytes[1]), UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
    }
}

/// A bounds-checked cursor over a message.
struct Reader {
    let bytes: [UInt8]
    private(set) var offset = 0
    /// Every byte of a name read by following a compression pointer (labels, the root,
    /// further pointers).
    private(set) var pointedLabels: [Range<Int>] = []

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func u8() throws -> UInt8 {
        guard offset < bytes.count else { throw DNSWireError.truncated }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() throws -> UInt16 {
        guard offset + 2 <= bytes.count else { throw DNSWireError.truncated }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func u32() throws -> UInt32 {
        UInt32(try u16()) << 16 | UInt32(try u16())
    }

    /// A name at the cursor, following compression pointers. A pointer must point before
    /// the start of the labels it continues (so every jump goes further back and the walk
    /// ends), and the whole name stays within 255 bytes.
    mutating func name() throws -> DNSName {
        var labels: [[UInt8]] = []
        var pos = offset
        var limit = offset // a pointer must point below this
        var length = 1
        var resume: Int?
        while true {
            guard pos < bytes.count else { throw DNSWireError.truncated }
            let len = Int(bytes[pos])
            switch len & 0xC0 {
            case 0x00:
                if len == 0 {
                    if resume != nil { pointedLabels.append(pos..<(pos + 1)) }
                    offset = resume ?? pos + 1
                    return DNSName(labels: labels)
                }
                guard pos + 1 + len <= bytes.count else { throw DNSWireError.truncated }
                length += 1 + len
                guard length <= 255 else { throw DNSWireError.nameTooLong }
                labels.append(Array(bytes[(pos + 1)..<(pos + 1 + len)]))
                if resume != nil { pointedLabels.append(pos..<(pos + 1 + len)) }
                pos += 1 + len
            case 0xC0:
                guard pos + 1 < bytes.count else { throw DNSWireError.truncated }
                let target = (len & 0x3F) << 8 | Int(bytes[pos + 1])
                // Never into the header (the cache rewrites its ID), always backwards.
                guard target >= 12, target < limit else { throw DNSWireError.badPointer }
                if resume == nil { resume = pos + 2 } else { pointedLabels.append(pos..<(pos + 2)) }
                limit = target
                pos = target
            default:
                throw DNSWireError.badLabel
            }
        }
    }

    mutating func record() throws -> DNSRecord {
        let name = try name()
        let type = try u16(), klass = try u16()
        let ttlOffset = offset
        let ttl = try u32()
        let length = Int(try u16())
        guard offset + length <= bytes.count else { throw DNSWireError.truncated }
        let start = offset
        let rdata = Array(bytes[start..<(start + length)])
        var soaMinimum: UInt32?
        if klass == DNSClass.internet {
            switch type {
            case DNSType.a where length != 4, DNSType.aaaa where length != 16:
                throw DNSWireError("\(type == DNSType.a ? "A" : "AAAA") record of \(length) bytes")
            case DNSType.soa:
                // MNAME and RNAME (maybe compressed), then five 32-bit fields, MINIMUM last.
                var inner = self
                _ = try inner.name()
                _ = try inner.name()
                guard inner.offset + 20 == start + length else { throw DNSWireError("SOA record of the wrong length") }
                inner.offset += 16
                soaMinimum = try inner.u32()
                pointedLabels = inner.pointedLabels
            case DNSType.cname, DNSType.ns, DNSType.ptr:
                var inner = self
                _ = try inner.name()
                guard inner.offset == start + length else { throw DNSWireError("name record of the wrong length") }
                pointedLabels = inner.pointedLabels
            default:
                break
            }
        }
        offset = start + length
        return DNSRecord(name: name, type: type, klass: klass, ttl: ttl, rdata: rdata, ttlOffset: ttlOffset, soaMinimum: soaMinimum)
    }
}

/// Writes messages: weft's own answers (A and AAAA for mesh names) and the short replies
/// (errors, truncation).
public struct DNSWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(v >> 8))
        bytes.append(UInt8(v & 0xFF))
    }

    mutating func u32(_ v: UInt32) {
        u16(UInt16(v >> 16))
        u16(UInt16(v & 0xFFFF))
    }

    mutating func name(_ n: DNSName) {
        for l in n.labels {
            bytes.append(UInt8(l.count))
            bytes += l
        }
        bytes.append(0)
    }

    /// A response to `query` (which has one question): its ID, opcode, RD and CD, QR and
    /// RA set, `rcode`; the question; `answers` owned by the question's name (written as a
    /// pointer to it); an OPT record offering `udpSize` if the query had one.
    public static func response(to query: DNSMessage, rcode: DNSRCode, authoritative: Bool = false, truncated: Bool = false,
                                answers: [(type: UInt16, ttl: UInt32, rdata: [UInt8])] = [], udpSize: UInt16 = 1232) -> [UInt8] {
        var w = DNSWriter()
        w.u16(query.id)
        var flags: UInt16 = 0x8000 | 0x0080 | (query.flags & 0x7910) // QR, RA; opcode, RD, CD kept
        if authoritative { flags |= 0x0400 }
        if truncated { flags |= 0x0200 }
        flags |= rcode.rawValue & 0xF
        w.u16(flags)
        let question = query.questions.first
        w.u16(question == nil ? 0 : 1)
        w.u16(UInt16(answers.count))
        w.u16(0)
        w.u16(query.edns == nil ? 0 : 1)
        if let q = question {
            w.name(q.name)
            w.u16(q.type)
            w.u16(q.klass)
        }
        for a in answers {
            w.u16(0xC00C) // the question's name, right after the header
            w.u16(a.type)
            w.u16(DNSClass.internet)
            w.u32(a.ttl)
            w.u16(UInt16(a.rdata.count))
            w.bytes += a.rdata
        }
        if query.edns != nil {
            w.bytes.append(0) // the root
            w.u16(DNSType.opt)
            w.u16(udpSize)
            w.u32(UInt32(rcode.rawValue >> 4) << 24) // extended rcode, version 0, DO clear
            w.u16(0)
        }
        return w.bytes
    }

    /// A reply to a query that could not be read past its header: the ID, QR, the
    /// opcode kept, `rcode`, nothing else.
    public static func bare(id: UInt16, flags: UInt16, rcode: DNSRCode) -> [UInt8] {
        var w = DNSWriter()
        w.u16(id)
        w.u16(0x8000 | (flags & 0x7900) | (rcode.rawValue & 0xF))
        for _ in 0..<4 { w.u16(0) }
        return w.bytes
    }
}
