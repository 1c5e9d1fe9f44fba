import WeftConfig

/// The DNS fuzz harness's entry point (Fuzz/, fuzz-dns): bytes as a workload's query and
/// as a resolver's answer, through everything that reads them.
public enum DNSFuzzing {
    static let table = DNSTable(hosts: [
        .init(name: "reviews.prod.svc.cluster.local", addresses: [IPAddress("10.96.0.10")!, IPAddress("fd00::10")!]),
        .init(name: "big.mesh", addresses: (1...60).map { IPAddress("10.97.0.\($0)")! }),
    ], searchDomains: ["corp.example"])

    /// As a query: the responder's decision over UDP and TCP, whose every reply must read
    /// back as a response with the query's ID, small enough for its transport. As an
    /// answer: what the cache would keep, served back with its TTLs aged, still readable.
    public static func message(_ bytes: [UInt8]) {
        for tcp in [false, true] {
            switch DNSResponder.decide(bytes, table: table, namespace: "prod", overTCP: tcp) {
            case .reply(let r):
                guard let m = try? DNSMessage(parsing: r) else { fatalError("a reply of ours does not parse: \(r)") }
                precondition(m.isResponse && m.id == DNSMessage.header(of: bytes)?.id, "reply with the wrong header")
                if !tcp, let q = try? DNSMessage(parsing: bytes) { precondition(r.count <= DNSResponder.udpLimit(q), "UDP reply too big") }
            case .forward(let q):
                precondition(q.questions.count == 1 && q.opcode == 0, "forwarded a query that is not one question")
            case .drop:
                break
            }
        }
        guard let response = try? DNSMessage(parsing: bytes), response.questions.count == 1 else { return }
        var cache = DNSCache(capacity: 4)
        let key = DNSCache.Key(response)
        cache.store(key, bytes, response, now: 1)
        if let served = cache.lookup(key, id: 7, now: 3_000_000_001) {
            guard let m = try? DNSMessage(parsing: served) else { fatalError("a cached answer no longer parses") }
            precondition(m.id == 7 && m.records.count == response.records.count, "cached answer changed shape")
        }
    }
}
