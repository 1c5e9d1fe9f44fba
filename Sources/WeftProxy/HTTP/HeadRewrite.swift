import NIOCore
import NIOHTTP1

/// What the proxy changes in a message head it passes on — a request on its way upstream,
/// a response on its way back: the received fields it does not pass on (hop-by-hop ones,
/// those the Connection header names, those it replaces or a route removes), the fields
/// it adds, in order, and a request's target. Made once per message, then applied either
/// to the received bytes — weft's HTTP/1 codecs copy the kept fields as they came, with no
/// String per field — or to NIO headers (HTTP/2 on the other side, mirrors, the local
/// inbound check); so every path sends the same message.
///
/// Names are given in lower case: the proxy's own are, and the router lower-cases a
/// route's (HTTPRouter.operations).
///
/// The result is the one NIO's `remove`/`add`/`replaceOrAdd` give applied in sequence:
/// the received fields that were kept, in their order, then the added ones, in theirs (a
/// removal also takes back what was added before it).
struct HeadRewrite: HeaderEditing {
    /// A request's target (empty for a response).
    var target: String
    /// The received fields: as NIO headers, or as a head's bytes and field offsets (a
    /// response passed from HTTP/1 to HTTP/1, which needs no String of them).
    private let source: Source
    private enum Source {
        case headers(HTTPHeaders)
        case fields(ByteBuffer, [HTTP1Field])
    }
    /// Lower-cased tokens of the received Connection header: hop-by-hop for this message
    /// (RFC 9110 §7.6.1).
    let connectionNamed: [String]
    /// In one array, so that a request's rewrite allocates once: the names of received
    /// fields that are not sent (besides the hop-by-hop ones), lower-cased, with no value;
    /// the fields added, in order, with theirs.
    private var edits: [(name: String, value: String?)] = []

    init(received: HTTPHeaders, target: String = "") {
        source = .headers(received)
        self.target = target
        // Most messages have no Connection header: no tokens, no array.
        if received.contains(where: { ProxyExchange.isHopByHop($0.name) }) {
            connectionNamed = received["connection"].flatMap { $0.split(separator: ",") }
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty }
        } else {
            connectionNamed = []
        }
    }

    /// A response head as weft's parser received it.
    init(received head: HTTP1ResponseHead) {
        source = .fields(head.bytes, head.fields)
        target = ""
        var named: [String] = []
        for f in head.fields where HTTP1RequestHead.nameIs(head.bytes, f, "connection") {
            HTTP1RequestHead.forEachToken(head.bytes, f) { named.append(String(decoding: $0, as: UTF8.self).lowercased()) }
        }
        connectionNamed = named
    }

    /// The received fields as NIO headers (made from the bytes when that is what was given).
    var received: HTTPHeaders {
        switch source {
        case .headers(let h): return h
        case .fields(let bytes, let fields): return HTTP1Field.nioHeaders(bytes, fields)
        }
    }

    mutating func remove(name: String) {
        assert(name == name.lowercased(), "header names are given in lower case")
        if edits.isEmpty { edits.reserveCapacity(8) }
        edits.removeAll { $0.value != nil && Self.same($0.name, name) }
        if !isRemoved(name) { edits.append((name, nil)) }
    }

    mutating func add(name: String, value: String) {
        assert(name == name.lowercased(), "header names are given in lower case")
        if edits.isEmpty { edits.reserveCapacity(8) }
        edits.append((name, value))
    }

    /// String equality, by length first (most names differ in it).
    @inline(__always)
    private static func same(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && a == b
    }

    /// The fields added, in order.
    func forEachAdded(_ body: (String, String) throws -> Void) rethrows {
        for e in edits { if let v = e.value { try body(e.name, v) } }
    }

    /// Whether an added field has this (lower-case) name.
    func adds(_ lowercased: StaticString) -> Bool {
        edits.contains { $0.value != nil && HTTP1ServerCodec.nameIs($0.name, lowercased) }
    }

    /// The value of the first added field with this (lower-case) name.
    func added(_ lowercased: StaticString) -> String? {
        edits.first { $0.value != nil && HTTP1ServerCodec.nameIs($0.name, lowercased) }?.value
    }

    private func isRemoved(_ lower: String) -> Bool {
        edits.contains { $0.value == nil && Self.same($0.name, lower) }
    }

    mutating func replaceOrAdd(name: String, value: String) {
        remove(name: name)
        add(name: name, value: value)
    }

    /// Received fields by this (lower-cased) name are not sent on. Not asked for `te`,
    /// whose `trailers` value alone is kept (see keeps).
    private func dropsReceived(_ lower: String) -> Bool {
        ProxyExchange.isHopByHop(lower) || isRemoved(lower) || connectionNamed.contains(lower)
    }

    /// The values the request will carry under `name`, received ones first.
    func values(_ lower: String) -> [String] {
        var out = dropsReceived(lower) ? [] : received[lower]
        forEachAdded { n, v in if Self.same(n, lower) { out.append(v) } }
        return out
    }

    func first(_ lower: String) -> String? {
        if !dropsReceived(lower), let v = received.first(name: lower) { return v }
        return edits.first { $0.value != nil && Self.same($0.name, lower) }?.value
    }

    /// The message's fields as NIO headers: the received ones that are end to end (hop-by-hop
    /// ones and those Connection names dropped, `te: trailers` kept: gRPC needs it, and it
    /// is legal in HTTP/2), then the edits.
    func headers() -> HTTPHeaders {
        let received = self.received
        var h: HTTPHeaders
        if connectionNamed.isEmpty && !received.contains(where: { ProxyExchange.isHopByHop($0.name) }) {
            // Most messages carry none: they pass as they are, with room for the additions
            // (reserving copies the shared storage, so only when there are some).
            h = received
            if !edits.isEmpty { h.reserveCapacity(received.count + edits.count) }
        } else {
            h = HTTPHeaders()
            for (name, value) in received {
                let lower = name.lowercased()
                if ProxyExchange.isHopByHop(lower) ? !(lower == "te" && value.lowercased() == "trailers") : connectionNamed.contains(lower) {
                    continue
                }
                h.add(name: name, value: value)
            }
        }
        for e in edits where e.value == nil { h.remove(name: e.name) }
        forEachAdded { h.add(name: $0, value: $1) }
        return h
    }

    /// Whether a received field (a lower-case name, as HTTP/2 carries it) is sent on.
    func keeps(_ lowercasedName: String, _ value: String) -> Bool {
        if ProxyExchange.isHopByHop(lowercasedName) { return lowercasedName == "te" && value == "trailers" }
        return !isRemoved(lowercasedName) && !connectionNamed.contains(lowercasedName)
    }

    /// Whether a received field is sent on, read from the bytes of the head that
    /// `received` was made from.
    func keeps(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        if ProxyExchange.isHopByHop(name) {
            return HTTP1RequestHead.equalsLowercased(name, "te") && HTTP1RequestHead.equalsLowercased(value, "trailers")
        }
        for e in edits where e.value == nil && Self.equalsLowercased(name, e.name) { return false }
        for n in connectionNamed where Self.equalsLowercased(name, n) { return false }
        return true
    }

    /// Copies the received fields this keeps from their head's bytes into `out`, each run
    /// of consecutive kept fields in one write (weft's parsers checked them as they came),
    /// dropping a Content-Length too when `dropLength`; returns whether one was copied.
    func copyKept(_ bytes: ByteBuffer, _ fields: [HTTP1Field], dropLength: Bool, into out: inout ByteBuffer) -> Bool {
        var copiedLength = false
        bytes.withUnsafeReadableBytes { p in
            // A run: from its first field's name to its last field's value.
            var runStart = -1, runEnd = -1
            func flush() {
                guard runStart >= 0 else { return }
                out.writeBytes(UnsafeRawBufferPointer(rebasing: p[runStart..<runEnd]))
                out.writeStaticString("\r\n")
                runStart = -1
            }
            for f in fields {
                let name = UnsafeRawBufferPointer(rebasing: p[Int(f.nameStart)..<Int(f.nameEnd)])
                var keep = keeps(name: name, value: UnsafeRawBufferPointer(rebasing: p[Int(f.valueStart)..<Int(f.valueEnd)]))
                if keep, HTTP1RequestHead.equalsLowercased(name, "content-length") {
                    if dropLength { keep = false } else { copiedLength = true }
                }
                if keep {
                    if runStart < 0 { runStart = Int(f.nameStart) }
                    runEnd = Int(f.valueEnd)
                } else {
                    flush()
                }
            }
            flush()
        }
        return copiedLength
    }

    /// HTTP1RequestHead.equalsLowercased for a String: the loop is written twice on
    /// purpose, sharing it through a buffer pointer cost the StaticString one (the
    /// codecs' hottest compare) ~400 instructions per request (callgrind).
    static func equalsLowercased(_ a: UnsafeRawBufferPointer, _ lowercased: String) -> Bool {
        var lowercased = lowercased
        return lowercased.withUTF8 { b in
            guard a.count == b.count else { return false }
            for i in 0..<a.count {
                let c = a[i] >= UInt8(ascii: "A") && a[i] <= UInt8(ascii: "Z") ? a[i] | 0x20 : a[i]
                if c != b[i] { return false }
            }
            return true
        }
    }
}

/// Headers a route's operations can edit: NIO's, and a request's rewrite.
protocol HeaderEditing {
    mutating func remove(name: String)
    mutating func add(name: String, value: String)
    mutating func replaceOrAdd(name: String, value: String)
}

extension HTTPHeaders: HeaderEditing {}
