import Testing
import WeftConfig
@testable import WeftDNS

/// Messages as a resolver writes them, byte by byte.
enum Wire {
    static func name(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        for l in text.split(separator: ".") {
            out.append(UInt8(l.utf8.count))
            out += Array(l.utf8)
        }
        return out + [0]
    }

    static func u16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func u32(_ v: UInt32) -> [UInt8] { u16(UInt16(v >> 16)) + u16(UInt16(v & 0xFFFF)) }

    /// OPT: root owner, type 41, class = UDP size, TTL = ext rcode | version | DO.
    static func opt(size: UInt16 = 1232, version: UInt8 = 0, dnssecOK: Bool = false) -> [UInt8] {
        [0] + u16(41) + u16(size) + [0, version, dnssecOK ? 0x80 : 0, 0] + u16(0)
    }

    static func query(_ name: String, type: UInt16 = DNSType.a, id: UInt16 = 0x1234, flags: UInt16 = 0x0100,
                      edns: [UInt8]? = nil) -> [UInt8] {
        u16(id) + u16(flags) + u16(1) + u16(0) + u16(0) + u16(edns == nil ? 0 : 1) + Wire.name(name) + u16(type) + u16(1) + (edns ?? [])
    }

    /// A response to one question with `answers` (A records owned by the question, by
    /// pointer) and `authority` (raw records).
    static func response(_ name: String, type: UInt16 = DNSType.a, id: UInt16 = 0x1234, rcode: UInt16 = 0, tc: Bool = false,
                         answers: [(ttl: UInt32, ip: [UInt8])] = [], authority: [[UInt8]] = []) -> [UInt8] {
        var out = u16(id) + u16(0x8180 | rcode | (tc ? 0x0200 : 0)) + u16(1) + u16(UInt16(answers.count)) + u16(UInt16(authority.count)) + u16(0)
        out += Wire.name(name) + u16(type) + u16(1)
        for a in answers { out += [0xC0, 0x0C] + u16(DNSType.a) + u16(1) + u32(a.ttl) + u16(4) + a.ip }
        for r in authority { out += r }
        return out
    }

    /// An SOA record owned by `zone` (written out in full), with its TTL and MINIMUM.
    static func soa(_ zone: String, ttl: UInt32, minimum: UInt32) -> [UInt8] {
        let rdata = name("ns." + zone) + name("admin." + zone) + u32(1) + u32(3600) + u32(600) + u32(86400) + u32(minimum)
        return name(zone) + u16(DNSType.soa) + u16(1) + u32(ttl) + u16(UInt16(rdata.count)) + rdata
    }
}

@Suite struct DNSWireTests {
    @Test func readsAQueryWithEDNS() throws {
        let m = try DNSMessage(parsing: Wire.query("Reviews.Default.svc.cluster.local", type: DNSType.aaaa, edns: Wire.opt(size: 4096, dnssecOK: true)))
        #expect(m.id == 0x1234 && !m.isResponse && m.opcode == 0 && m.recursionDesired)
        #expect(m.questions == [DNSQuestion(name: DNSName("reviews.default.svc.cluster.local")!, type: DNSType.aaaa)])
        #expect(m.edns == EDNS(udpPayloadSize: 4096, extendedRCode: 0, version: 0, dnssecOK: true))
        #expect(m.additionals.isEmpty)
    }

    @Test func followsCompressionAndReadsSOAMinimum() throws {
        let bytes = Wire.response("example.org", rcode: 3, authority: [
            [0xC0, 0x0C] + Wire.u16(DNSType.soa) + Wire.u16(1) + Wire.u32(900) + Wire.u16(27)
                + [2] + Array("ns".utf8) + [0xC0, 0x0C] + [0xC0, 0x0C] + Wire.u32(1) + Wire.u32(2) + Wire.u32(3) + Wire.u32(4) + Wire.u32(60),
        ])
        let m = try DNSMessage(parsing: bytes)
        #expect(m.rcode == DNSRCode.nxDomain.rawValue)
        #expect(m.authorities.first?.name == DNSName("example.org"))
        #expect(m.authorities.first?.soaMinimum == 60)
        #expect(DNSCache.lifetime(of: m) == 60)
    }

    /// What an attacker may send: none of it loops, reads past the end, or is accepted.
    @Test(arguments: [
        ("pointer to itself", Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(1) + [0, 0, 0, 0, 0, 0] + [0xC0, 12] + Wire.u16(1) + Wire.u16(1), "compression pointer does not point back"),
        ("pointer forward", Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(1) + [0, 0, 0, 0, 0, 0] + [0xC0, 20, 0, 0, 0, 0] + Wire.u16(1), "compression pointer does not point back"),
        ("reserved label type", Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(1) + [0, 0, 0, 0, 0, 0] + [0x41, 0] + Wire.u16(1) + Wire.u16(1), "label type 0x40 or 0x80 (reserved)"),
        ("label past the end", Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(1) + [0, 0, 0, 0, 0, 0] + [9, 65, 65], "message ends inside a field"),
        ("more questions than bytes", Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(0xFFFF) + [0, 0, 0, 0, 0, 0] + [0, 0, 1, 0, 1], "message ends inside a field"),
        ("bytes after the last record", Wire.query("a.b") + [0], "1 byte(s) after the last record"),
        ("two OPT records", Array(Wire.query("a.b", edns: Wire.opt() + Wire.opt()).enumerated().map { $0.offset == 11 ? 2 : $0.element }), "two OPT records"),
        ("A of 5 bytes", Wire.response("a.b", answers: [(1, [1, 2, 3, 4])]).dropLast(6) + [0, 5, 1, 2, 3, 4, 5], "A record of 5 bytes"),
        // fuzz-dns: a third answer's name made of the second's type, class and TTL bytes;
        // the cache aging that TTL changed the name.
        ("name in a TTL", [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0, 3, 0x77, 0x77, 0x77, 7] + Array("example".utf8) + [3] + Array("org".utf8)
            + [0, 0, 1, 0, 1] + [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]
            + [0xC0, 12, 0, 1, 0, 1, 0x5C, 0, 0, 0, 0, 4, 192, 0, 2, 2]
            + [0xC0, 0x34, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 192, 0, 2, 3], "a compressed name points into a record's TTL"),
        // …and its variant with the name ending (the root's zero byte) inside the TTL.
        ("root in a TTL", [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0, 3, 0x77, 0x77, 0x77, 7] + Array("example".utf8) + [3] + Array("org".utf8)
            + [0, 0, 1, 0, 1] + [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]
            + [0xC0, 12, 0, 1, 0, 1, 0x5C, 0, 0, 0, 0, 4, 192, 0, 2, 2]
            + [0xC0, 0x38, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 192, 0, 2, 3], "a compressed name points into a record's TTL"),
        ("pointer into the header", Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(1) + [0, 0, 0, 0, 0, 0] + [0xC0, 4] + Wire.u16(1) + Wire.u16(1), "compression pointer does not point back"),
    ] as [(String, [UInt8], String)])
    func refusesHostileMessages(_ what: String, _ bytes: [UInt8], _ reason: String) {
        #expect(throws: DNSWireError(reason), "\(what)") { try DNSMessage(parsing: bytes) }
    }

    @Test func boundsNameLength() {
        // 128 one-byte labels: 257 bytes on the wire.
        let long = Wire.u16(1) + Wire.u16(0x0100) + Wire.u16(1) + [0, 0, 0, 0, 0, 0] + Array(repeating: [1, 97], count: 128).flatMap { $0 } + [0] + Wire.u16(1) + Wire.u16(1)
        #expect(throws: DNSWireError.nameTooLong) { try DNSMessage(parsing: long) }
        #expect(DNSName(String(repeating: "a.", count: 127) + "a") == nil)
        #expect(DNSName(String(repeating: "x", count: 64) + ".org") == nil)
        #expect(DNSName("a..b") == nil)
    }

    @Test func namesCompareWithoutCase() {
        let a = DNSName("Reviews.PROD.svc")!, b = DNSName("reviews.prod.SVC.")!
        #expect(a == b && a.hashValue == b.hashValue && a.key == "reviews.prod.svc")
        #expect(DNSName(labels: [[0x5B], [0x7B]]) != DNSName(labels: [[0x7B], [0x5B]])) // [ and { are not letters
        #expect(DNSName(labels: [Array("a.b".utf8), [0]]).key == "a\\046b.\\000")
        #expect(DNSName("a.b.example.org")!.dropping(suffix: DNSName("EXAMPLE.org")!) == DNSName("a.b"))
    }

    @Test func readsResolvConf() {
        let c = ResolvConf(parsing: """
            # the node's
            nameserver 10.0.0.2
            nameserver fe80::1%eth0
            nameserver 2001:db8::53 ; comment
            domain old.example
            search corp.example lab.example
            options ndots:2 timeout:1 attempts:3 rotate
            nameserver 10.0.0.3
            nameserver 10.0.0.4
            """)
        #expect(c.nameservers.map(\.description) == ["10.0.0.2", "2001:db8::53", "10.0.0.3"])
        #expect(c.search == ["corp.example", "lab.example"] && c.timeout == 1 && c.attempts == 3)
        #expect(ResolvConf(parsing: "").nameservers.map(\.description) == ["127.0.0.1"])
    }
}

@Suite struct DNSResponderTests {
    let table = DNSTable(hosts: [
        .init(name: "reviews.prod.svc.cluster.local", addresses: [IPAddress("10.96.0.10")!, IPAddress("fd00::10")!]),
        .init(name: "payments.internal", addresses: [IPAddress("240.240.0.7")!]),
        .init(name: "*.wild.example", addresses: [IPAddress("10.96.0.99")!]),
    ], searchDomains: ["corp.example"])

    func decide(_ bytes: [UInt8], namespace: String? = "prod", tcp: Bool = false) -> DNSDecision {
        DNSResponder.decide(bytes, table: table, namespace: namespace, overTCP: tcp)
    }

    func reply(_ d: DNSDecision) throws -> DNSMessage {
        guard case .reply(let r) = d else { throw DNSWireError("not a reply: \(d)") }
        return try DNSMessage(parsing: r)
    }

    @Test func answersMeshNamesAndTheirShortForms() throws {
        for (name, ns) in [("reviews.prod.svc.cluster.local", nil), ("reviews", "prod"), ("REVIEWS.prod", "other"), ("reviews.prod.svc", nil),
                           ("reviews.corp.example", "prod"), ("payments.internal", nil)] as [(String, String?)] {
            let m = try reply(decide(Wire.query(name, id: 77), namespace: ns))
            #expect(m.id == 77 && m.isResponse && m.flags & 0x0400 != 0 && m.rcode == 0, "\(name)")
            #expect(m.answers.count == 1 && m.answers[0].ttl == 30 && m.answers[0].name == DNSName(name), "\(name)")
            #expect(m.answers[0].rdata == (name.hasPrefix("payments") ? [240, 240, 0, 7] : [10, 96, 0, 10]), "\(name)")
        }
        let six = try reply(decide(Wire.query("reviews", type: DNSType.aaaa)))
        #expect(six.answers.map(\.rdata) == [IPAddress("fd00::10")!.bytes])
    }

    @Test func forwardsWhatTheMeshDoesNotKnow() {
        for (name, ns) in [("reviews", "other"), ("reviews", nil), ("example.org", "prod"), ("x.wild.example", "prod"), ("reviews.prod.svc.cluster", "prod")]
            as [(String, String?)] {
            guard case .forward(let q) = decide(Wire.query(name), namespace: ns) else {
                Issue.record("\(name) from \(ns ?? "-") was not forwarded")
                continue
            }
            #expect(q.questions.first?.name == DNSName(name))
        }
    }

    @Test func meshNameWithoutSuchRecordIsNoData() throws {
        for type in [DNSType.aaaa, UInt16(15), DNSType.ptr] {
            let m = try reply(decide(Wire.query("payments.internal", type: type)))
            #expect(m.rcode == DNSRCode.noError.rawValue && m.answers.isEmpty && m.flags & 0x0400 != 0)
        }
    }

    @Test func badQueriesGetClearErrors() throws {
        #expect(try reply(decide(Wire.query("a.b", flags: 0x1100))).rcode == DNSRCode.notImp.rawValue) // opcode 2
        let two = Wire.query("a.b").enumerated().map { $0.offset == 5 ? 2 : $0.element } + Wire.name("c.d") + Wire.u16(1) + Wire.u16(1)
        #expect(try reply(decide(two)).rcode == DNSRCode.formErr.rawValue)
        let garbled = Array(Wire.query("a.b").prefix(14)) // the question cut off
        let f = try reply(decide(garbled))
        #expect(f.id == 0x1234 && f.rcode == DNSRCode.formErr.rawValue && f.questions.isEmpty)
        let v1 = try reply(decide(Wire.query("reviews", edns: Wire.opt(version: 1))))
        #expect(v1.rcode == DNSRCode.badVers.rawValue && v1.answers.isEmpty)
    }

    @Test func dropsWhatIsNotAQuery() {
        for bytes in [Wire.response("reviews"), [1, 2, 3], []] {
            guard case .drop = decide(bytes) else {
                Issue.record("answered \(bytes)")
                continue
            }
        }
    }

    /// 60 addresses: 1,000+ bytes of answers.
    @Test func truncatesWhatUDPCannotCarry() throws {
        let many = DNSTable(hosts: [.init(name: "big.mesh", addresses: (1...60).map { IPAddress("10.97.0.\($0)")! })])
        let plain = DNSResponder.decide(Wire.query("big.mesh"), table: many, namespace: nil, overTCP: false)
        let t = try reply(plain)
        #expect(t.truncated && t.answers.isEmpty && t.questions.count == 1)
        let edns = try reply(DNSResponder.decide(Wire.query("big.mesh", edns: Wire.opt(size: 1232)), table: many, namespace: nil, overTCP: false))
        #expect(!edns.truncated && edns.answers.count == 60 && edns.edns?.udpPayloadSize == 1232)
        let tcp = try reply(DNSResponder.decide(Wire.query("big.mesh"), table: many, namespace: nil, overTCP: true))
        #expect(!tcp.truncated && tcp.answers.count == 60 && tcp.edns == nil)
    }
}

@Suite struct DNSCacheTests {
    let second: UInt64 = 1_000_000_000

    @Test func keepsForTheSmallestTTLAndCountsDown() throws {
        var cache = DNSCache()
        let bytes = Wire.response("example.org", answers: [(300, [192, 0, 2, 1]), (120, [192, 0, 2, 2])])
        let query = try DNSMessage(parsing: Wire.query("example.org"))
        cache.store(DNSCache.Key(query), bytes, try DNSMessage(parsing: bytes), now: 5 * second)
        let served = cache.lookup(DNSCache.Key(query), id: 9, now: 35 * second)
        let later = try DNSMessage(parsing: #require(served))
        #expect(later.id == 9 && later.answers.map(\.ttl) == [270, 90])
        let expired = cache.lookup(DNSCache.Key(query), id: 9, now: 125 * second)
        #expect(expired == nil)
        #expect(cache.count == 0)
        // Another query shape is another answer.
        let other = cache.lookup(DNSCache.Key(try DNSMessage(parsing: Wire.query("example.org", edns: Wire.opt()))), id: 1, now: 6 * second)
        #expect(other == nil)
    }

    @Test(arguments: [
        (Wire.response("x.org", rcode: 3, authority: [Wire.soa("x.org", ttl: 900, minimum: 60)]), UInt32?(60)),
        (Wire.response("x.org", rcode: 0, authority: [Wire.soa("x.org", ttl: 30, minimum: 600)]), 30), // NODATA
        (Wire.response("x.org", rcode: 3), nil), // no SOA: not kept
        (Wire.response("x.org", rcode: 2), nil), // SERVFAIL
        (Wire.response("x.org", tc: true, answers: [(60, [1, 2, 3, 4])]), nil),
        (Wire.response("x.org", answers: [(0, [1, 2, 3, 4])]), nil),
        (Wire.response("x.org", answers: [(86400, [1, 2, 3, 4])]), 3600),
    ] as [([UInt8], UInt32?)])
    func lifetime(_ bytes: [UInt8], _ expected: UInt32?) throws {
        #expect(DNSCache.lifetime(of: try DNSMessage(parsing: bytes)) == expected)
    }

    @Test func holdsNoMoreThanItsBytes() throws {
        var cache = DNSCache(capacity: 1000, maxBytes: 2048)
        for i in 0..<60 {
            let q = try DNSMessage(parsing: Wire.query("name-number-\(i).example.org"))
            let r = Wire.response("name-number-\(i).example.org", answers: [(300, [1, 2, 3, 4])])
            cache.store(DNSCache.Key(q), r, try DNSMessage(parsing: r), now: UInt64(i))
            #expect(cache.bytes <= 2048)
        }
        #expect(cache.count > 10)
        // An answer over a sixteenth of the room is not kept at all.
        let big = Wire.response("big.example.org", answers: (0..<12).map { _ in (300, [1, 2, 3, 4]) })
        let q = try DNSMessage(parsing: Wire.query("big.example.org"))
        cache.store(DNSCache.Key(q), big, try DNSMessage(parsing: big), now: 100)
        let got = cache.lookup(DNSCache.Key(q), id: 1, now: 101)
        #expect(big.count > 128 && got == nil)
    }

    @Test func makesRoomWhenFull() throws {
        var cache = DNSCache(capacity: 20)
        for i in 0..<25 {
            let q = try DNSMessage(parsing: Wire.query("n\(i).org"))
            let r = Wire.response("n\(i).org", answers: [(UInt32(100 + i), [1, 2, 3, 4])])
            cache.store(DNSCache.Key(q), r, try DNSMessage(parsing: r), now: 0)
        }
        #expect(cache.count <= 20)
        // The latest is kept; the ones closest to expiring went first.
        let latest = cache.lookup(DNSCache.Key(try DNSMessage(parsing: Wire.query("n24.org"))), id: 1, now: 1)
        let first = cache.lookup(DNSCache.Key(try DNSMessage(parsing: Wire.query("n0.org"))), id: 1, now: 1)
        #expect(latest != nil && first == nil)
    }
}

/// REGISTRY_ONLY's names: which answers open addresses, on which ports.
@Suite struct EgressNamesTests {
    @Test func exactAndWildcardHostsOnLabelBoundaries() {
        let n = EgressNames(hosts: [("*.partners.example.com", [443]), ("api.example.com", [443, 8443]), ("*.example.com", [80])])
        #expect(n.ports(for: "api.example.com") == [443, 8443, 80])
        #expect(n.ports(for: "a.b.partners.example.com") == [443, 80])
        #expect(n.ports(for: "partners.example.com") == [80])       // a wildcard does not cover its own suffix…
        #expect(n.ports(for: "evilexample.com") == nil)             // …nor a name that merely ends like it
        #expect(n.ports(for: "example.org") == nil)
        #expect(EgressNames().isEmpty && EgressNames().ports(for: "x") == nil)
    }
}
