/// What the agent does with one query: answer it from the mesh's names, or forward it.
/// No I/O here: DNSServer carries the decision out.
public enum DNSDecision: Sendable {
    /// These bytes go back to the client.
    case reply([UInt8])
    /// Not a mesh name: the node's resolvers are asked (the query as read).
    case forward(DNSMessage)
    /// Not a query (a response sent to us, or less than a header): nothing goes back, as
    /// answering would let anyone bounce traffic off the agent.
    case drop
}

public enum DNSResponder {
    /// TTL of the mesh's own answers: Istio's DNS proxy answers with 30 s as well.
    public static let ttl: UInt32 = 30
    /// The largest UDP reply weft sends: 1232 bytes, DNS Flag Day 2020's size, which no
    /// path fragments.
    public static let maxUDP = 1232

    /// The decision on `bytes`, a query from a workload of `namespace` (nil: not known;
    /// evaluated only if the answer depends on it).
    public static func decide(_ bytes: [UInt8], table: DNSTable, namespace: @autoclosure () -> String?, overTCP: Bool) -> DNSDecision {
        guard let (id, flags) = DNSMessage.header(of: bytes), flags & 0x8000 == 0 else { return .drop }
        let query: DNSMessage
        do {
            query = try DNSMessage(parsing: bytes)
        } catch {
            return .reply(DNSWriter.bare(id: id, flags: flags, rcode: .formErr))
        }
        guard query.opcode == 0 else { return .reply(DNSWriter.response(to: query, rcode: .notImp)) }
        guard query.questions.count == 1, query.answers.isEmpty, query.authorities.isEmpty else {
            return .reply(DNSWriter.response(to: query, rcode: .formErr))
        }
        // EDNS version 0 is the only one (RFC 6891 §6.1.3).
        if let e = query.edns, e.version > 0 { return .reply(DNSWriter.response(to: query, rcode: .badVers)) }
        let q = query.questions[0]
        guard q.klass == DNSClass.internet, let hit = table.lookup(q.name, namespace: namespace) else { return .forward(query) }
        var answers: [(type: UInt16, ttl: UInt32, rdata: [UInt8])] = []
        if q.type == DNSType.a || q.type == DNSType.any {
            answers += hit.v4.map { (DNSType.a, ttl, Array($0.bytes.prefix(4))) }
        }
        if q.type == DNSType.aaaa || q.type == DNSType.any {
            answers += hit.v6.map { (DNSType.aaaa, ttl, $0.bytes) }
        }
        // A mesh name asked for another type (or for a family it has no address of): it
        // exists, with no such record (NODATA), rather than NXDOMAIN, which would tell the
        // resolver the name has no address of any type.
        let reply = DNSWriter.response(to: query, rcode: .noError, authoritative: true, answers: answers)
        return .reply(fit(reply, to: query, overTCP: overTCP))
    }

    /// The most a UDP reply to `query` may hold: 512 bytes without EDNS, else what the
    /// client offers, between 512 and `maxUDP`.
    public static func udpLimit(_ query: DNSMessage) -> Int {
        guard let e = query.edns else { return 512 }
        return min(max(512, Int(e.udpPayloadSize)), maxUDP)
    }

    /// `reply` if it fits the transport, else its truncated form — TC set, the question
    /// and the reply's code only — which makes the client ask again over TCP (RFC 1035
    /// §4.2.1, RFC 7766).
    public static func fit(_ reply: [UInt8], to query: DNSMessage, overTCP: Bool) -> [UInt8] {
        if reply.count <= (overTCP ? 65535 : udpLimit(query)) { return reply }
        let code = reply.count >= 4 ? DNSRCode(rawValue: UInt16(reply[3] & 0xF)) ?? .servFail : .servFail
        return DNSWriter.response(to: query, rcode: code, authoritative: reply.count >= 4 && reply[2] & 0x04 != 0, truncated: true)
    }
}
