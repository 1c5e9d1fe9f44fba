import NIOCore
import WeftConfig

/// What the node's resolvers say a name has, for the agent's own use (the names of
/// `resolution: DNS` services): asked through the forwarder and its cache, exactly as a
/// workload's query would be.
public struct DNSLookup: Sendable, Equatable {
    /// The addresses of the asked type, in the answer's order (a CNAME chain followed by
    /// the resolver).
    public var addresses: [IPAddress]
    /// Seconds the answer holds: the least TTL of its records; for "no such name" or "no
    /// such record", the negative TTL of the zone's SOA (RFC 2308), else 30.
    public var ttl: UInt32
    /// No resolver gave an answer (SERVFAIL, REFUSED, nothing in time): `addresses` says
    /// nothing then.
    public var failed: Bool

    public init(addresses: [IPAddress], ttl: UInt32, failed: Bool) {
        self.addresses = addresses
        self.ttl = ttl
        self.failed = failed
    }
}

extension DNSServer {
    /// The server's event loop (its lookups complete there).
    public var eventLoop: EventLoop { loop }

    /// Asks for `name`'s records of `type` (DNSType.a or .aaaa).
    public func lookup(_ name: String, type: UInt16) -> EventLoopFuture<DNSLookup> {
        loop.flatSubmit { [self] in
            guard let qname = DNSName(name) else { return loop.makeFailedFuture(DNSWireError("\(name) is not a DNS name")) }
            var w = DNSWriter()
            w.u16(UInt16.random(in: 0...UInt16.max))
            w.u16(0x0100) // a query, recursion desired
            w.u16(1)
            for _ in 0..<3 { w.u16(0) }
            w.name(qname)
            w.u16(type)
            w.u16(DNSClass.internet)
            let bytes = w.bytes
            let query: DNSMessage
            do { query = try DNSMessage(parsing: bytes) } catch { return loop.makeFailedFuture(error) }
            let answer = forwarder.cached(query).map { loop.makeSucceededFuture($0) } ?? forwarder.resolve(query, bytes)
            return answer.map { Self.lookup(from: $0, type: type) }
        }
    }

    static func lookup(from bytes: [UInt8], type: UInt16) -> DNSLookup {
        guard let m = try? DNSMessage(parsing: bytes), m.isResponse, !m.truncated else {
            return DNSLookup(addresses: [], ttl: 0, failed: true)
        }
        switch m.rcode {
        case DNSRCode.noError.rawValue, DNSRCode.nxDomain.rawValue: break
        default: return DNSLookup(addresses: [], ttl: 0, failed: true)
        }
        let records = m.answers.filter { $0.type == type && $0.klass == DNSClass.internet }
        let addresses = records.map { IPAddress(family: type == DNSType.a ? 4 : 6, bytes: $0.rdata) }
        if let least = records.map(\.ttl).min() { return DNSLookup(addresses: addresses, ttl: least, failed: false) }
        let negative = m.authorities.first { $0.type == DNSType.soa }.map { min($0.ttl, $0.soaMinimum ?? $0.ttl) }
        return DNSLookup(addresses: [], ttl: negative ?? 30, failed: false)
    }
}
