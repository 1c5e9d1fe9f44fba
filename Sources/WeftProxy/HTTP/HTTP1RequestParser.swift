import NIOCore
import NIOHTTP1

/// weft's own HTTP/1.1 request parser: the request head is parsed once, in place, into
/// offsets over the received bytes (no String, no header dictionary), and the body is
/// handed on as slices of the same buffers. NIO's codec turns every head into Strings and
/// an `HTTPHeaders` and re-encodes it on the way out; the bench's floor rows show that
/// costs half of HTTP/1.1's rate (README, L7 proxying), so the proxy forwards what it
/// received and rewrites only what a route changes.
///
/// It is strict where a proxy must be (RFC 9112, and the README's hostile-input rules):
/// CRLF only (a bare LF or CR is refused), no whitespace before a colon, no obs-fold, no
/// control bytes in a request target or field value, exactly one `Content-Length` of
/// digits, `Transfer-Encoding` only as `chunked` and never with `Content-Length`, bounded
/// head size and field count, bounded chunk-size lines. It never accepts what NIO's
/// parser (llhttp) refuses, except methods: any upper-case token is a method here (as in
/// Envoy), a method with a lower-case letter is refused (policies match methods exactly).
///
/// A pure state machine over the bytes it is given — no I/O, no clock — so it is tested
/// and fuzzed alone: `parse(_:)` consumes what it can from the caller's cumulation buffer
/// and returns one event at a time.
struct HTTP1RequestParser {
    /// What the bytes so far complete.
    enum Event {
        /// A request head (the request's body, if any, follows).
        case head(HTTP1RequestHead)
        /// Body bytes, as a slice of what was received (chunk framing removed).
        case body(ByteBuffer)
        /// The request is complete; with a chunked body, its trailer fields (if any).
        case end(HTTP1Trailers?)
    }

    enum Failure: Error, Equatable {
        /// Request line and fields over the limit (431).
        case headTooLarge
        /// More fields than the limit (431).
        case tooManyFields
        case badRequestLine
        case badVersion
        /// A response's status line (upstream side).
        case badStatusLine
        case badFieldName
        case badFieldValue
        case whitespaceBeforeColon
        case obsFold
        case badLineEnding
        case contentLengthWithTransferEncoding
        case badContentLength
        case badTransferEncoding
        case badChunk
        /// More than one Host field (RFC 9112 §3.2); the parser counts, the codec refuses.
        case multipleHosts

        /// The status the client is answered with (then the connection closes).
        var status: HTTPResponseStatus {
            self == .headTooLarge || self == .tooManyFields ? .requestHeaderFieldsTooLarge : .badRequest
        }
    }

    private enum State {
        /// Waiting for a head; `scanned` bytes of the buffer are known to hold no end.
        case head(scanned: Int)
        case body(HTTP1BodyReader)
        /// A request without a body is complete; `.end` is the next event.
        case endPending
        /// A request that closes the connection is complete: nothing after it is read (the
        /// connection closes once it is answered; llhttp refuses such bytes the same way).
        case closed
        case failed(Failure)
    }

    let maxHeadBytes: Int
    let maxFields: Int
    private var state = State.head(scanned: 0)
    /// The request being read keeps the connection open.
    private var keepAlive = true
    /// The field index of the head being built, kept between requests so that a keep-alive
    /// connection reuses its storage instead of allocating one per request.
    private var fieldStorage: [HTTP1Field] = []

    init(maxHeadBytes: Int = 60 * 1024, maxFields: Int = 100) {
        self.maxHeadBytes = maxHeadBytes
        self.maxFields = maxFields
    }

    /// A request that closes the connection has been read: no more are.
    var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// The next event the buffer completes, consuming its bytes; nil when more bytes are
    /// needed. After a throw the parser stays failed (the connection is to be closed).
    mutating func parse(_ buffer: inout ByteBuffer) throws -> Event? {
        switch state {
        case .failed(let f):
            throw f
        case .closed:
            return nil
        case .head(let scanned):
            return try guarded { try $0.parseHead(&buffer, scanned: scanned) }
        case .endPending:
            state = keepAlive ? .head(scanned: 0) : .closed
            return .end(nil)
        case .body(var reader):
            return try guarded { parser in
                let event = try reader.next(&buffer)
                switch event {
                case .data(let slice)?:
                    parser.state = .body(reader)
                    return .body(slice)
                case .end(let trailers)?:
                    parser.state = parser.keepAlive ? .head(scanned: 0) : .closed
                    return .end(trailers)
                case nil:
                    parser.state = .body(reader)
                    return nil
                }
            }
        }
    }

    /// Runs a step; a failure it throws leaves the parser failed.
    private mutating func guarded(_ step: (inout HTTP1RequestParser) throws -> Event?) throws -> Event? {
        do {
            return try step(&self)
        } catch let f as Failure {
            state = .failed(f)
            throw f
        }
    }

    // MARK: - the head

    private mutating func parseHead(_ buffer: inout ByteBuffer, scanned: Int) throws -> Event? {
        // Empty lines before a request line are skipped (RFC 9112 §2.2), as the sniffer
        // and llhttp do; only as CRLF.
        if scanned == 0 {
            while buffer.readableBytes >= 1, buffer.readableBytesView.first == UInt8(ascii: "\r") {
                guard buffer.readableBytes >= 2 else { return nil }
                guard buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) == 0x0D0A else { throw Failure.badLineEnding }
                buffer.moveReaderIndex(forwardBy: 2)
            }
            if buffer.readableBytesView.first == UInt8(ascii: "\n") { throw Failure.badLineEnding }
        }
        let (section, checked) = try HTTP1BodyReader.takeSection(&buffer, scanned: scanned, maxBytes: maxHeadBytes)
        guard let bytes = section else {
            state = .head(scanned: checked)
            return nil
        }
        fieldStorage.removeAll(keepingCapacity: true)
        let head = try HTTP1RequestHead(bytes: bytes, fields: &fieldStorage, maxFields: maxFields)
        keepAlive = head.keepAlive
        switch head.framing {
        case .none, .length(0): state = .endPending
        case .length(let n): state = .body(HTTP1BodyReader(.length(n), maxHeadBytes: maxHeadBytes, maxFields: maxFields))
        case .chunked: state = .body(HTTP1BodyReader(.chunked, maxHeadBytes: maxHeadBytes, maxFields: maxFields))
        }
        return .head(head)
    }
}

/// One header field of a parsed head: offsets into its bytes (value without the OWS).
struct HTTP1Field: Equatable {
    var nameStart: Int32
    var nameEnd: Int32
    var valueStart: Int32
    var valueEnd: Int32

    /// bytes[start..<end], offsets counted from the readable bytes' start.
    static func view(_ bytes: ByteBuffer, _ start: Int32, _ end: Int32) -> ByteBufferView {
        bytes.readableBytesView[(bytes.readerIndex + Int(start))..<(bytes.readerIndex + Int(end))]
    }

    /// Fields as NIO's headers (a String for each name and value).
    static func nioHeaders(_ bytes: ByteBuffer, _ fields: [HTTP1Field]) -> HTTPHeaders {
        var headers: [(String, String)] = []
        headers.reserveCapacity(fields.count)
        for f in fields {
            headers.append((String(decoding: view(bytes, f.nameStart, f.nameEnd), as: UTF8.self),
                            String(decoding: view(bytes, f.valueStart, f.valueEnd), as: UTF8.self)))
        }
        return HTTPHeaders(headers)
    }
}

/// Trailer fields of a chunked request, over their own bytes.
struct HTTP1Trailers {
    let bytes: ByteBuffer
    let fields: [HTTP1Field]

    func name(_ f: HTTP1Field) -> ByteBufferView { HTTP1Field.view(bytes, f.nameStart, f.nameEnd) }
}

/// A request head parsed in place: the bytes as received (request line through the blank
/// line) and where each part lies in them.
struct HTTP1RequestHead {
    enum Framing: Equatable {
        case none
        case length(Int64)
        case chunked
    }

    /// The received head, request line through the empty line.
    let bytes: ByteBuffer
    let methodEnd: Int
    let targetStart: Int
    let targetEnd: Int
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    let minorVersion: Int
    let fields: [HTTP1Field]
    let framing: Framing
    /// The connection stays open after this exchange (HTTP/1.1 unless `Connection:
    /// close`; HTTP/1.0 only with `Connection: keep-alive`).
    let keepAlive: Bool
    /// `Host` fields in the head (RFC 9112 §3.2: an HTTP/1.1 request has exactly one; what
    /// to do otherwise is the caller's decision).
    let hostCount: Int
    /// The request asks to switch protocols (an Upgrade field).
    let upgrade: Bool

    init(bytes: ByteBuffer, fields storage: inout [HTTP1Field], maxFields: Int) throws {
        self.bytes = bytes
        var methodEnd = 0, targetStart = 0, targetEnd = 0, minor = 0, lineEnd = 0
        try bytes.withUnsafeReadableBytes { p in
            // method: an upper-case token (see the parser's comment).
            var i = 0
            while i < p.count, p[i] != 32 {
                guard Self.isTokenByte(p[i]), !(p[i] >= UInt8(ascii: "a") && p[i] <= UInt8(ascii: "z")) else {
                    throw HTTP1RequestParser.Failure.badRequestLine
                }
                i += 1
            }
            guard i > 0, i < p.count else { throw HTTP1RequestParser.Failure.badRequestLine }
            methodEnd = i
            i += 1
            // request-target: visible ASCII only.
            targetStart = i
            while i < p.count, p[i] != 32 {
                guard p[i] > 32, p[i] < 127 else { throw HTTP1RequestParser.Failure.badRequestLine }
                i += 1
            }
            guard i > targetStart, i < p.count else { throw HTTP1RequestParser.Failure.badRequestLine }
            targetEnd = i
            let connect = methodEnd == 7 && Self.equalsLowercased(UnsafeRawBufferPointer(rebasing: p[0..<7]), "connect")
            guard Self.isRequestTarget(UnsafeRawBufferPointer(rebasing: p[targetStart..<targetEnd]), connect: connect) else {
                throw HTTP1RequestParser.Failure.badRequestLine
            }
            i += 1
            // HTTP-version, exactly, then CRLF.
            guard i + 10 <= p.count, p[i] == UInt8(ascii: "H"), p[i + 1] == UInt8(ascii: "T"), p[i + 2] == UInt8(ascii: "T"),
                  p[i + 3] == UInt8(ascii: "P"), p[i + 4] == UInt8(ascii: "/"), p[i + 5] == UInt8(ascii: "1"),
                  p[i + 6] == UInt8(ascii: ".")
            else { throw HTTP1RequestParser.Failure.badVersion }
            switch p[i + 7] {
            case UInt8(ascii: "0"): minor = 0
            case UInt8(ascii: "1"): minor = 1
            default: throw HTTP1RequestParser.Failure.badVersion
            }
            guard p[i + 8] == 13, p[i + 9] == 10 else {
                throw p[i + 8] == 10 || p[i + 8] == 13 ? HTTP1RequestParser.Failure.badLineEnding : HTTP1RequestParser.Failure.badVersion
            }
            lineEnd = i + 10
        }
        self.methodEnd = methodEnd
        self.targetStart = targetStart
        self.targetEnd = targetEnd
        self.minorVersion = minor
        try Self.parseFields(bytes, from: lineEnd, into: &storage, maxFields: maxFields)
        self.fields = storage

        // Framing and connection management, from the fields that decide them.
        let decided = try Self.framingFields(bytes, storage)
        let chunked = decided.chunked, contentLength = decided.contentLength
        if chunked {
            guard contentLength == nil else { throw HTTP1RequestParser.Failure.contentLengthWithTransferEncoding }
            // HTTP/1.0 has no chunked coding (RFC 9112 §6.1).
            guard minor == 1 else { throw HTTP1RequestParser.Failure.badTransferEncoding }
            framing = .chunked
        } else if let n = contentLength {
            framing = .length(n)
        } else {
            framing = .none
        }
        keepAlive = decided.keepAlive(minorVersion: minor)
        hostCount = decided.hosts
        upgrade = decided.upgrade
    }

    /// The four forms of RFC 9112 §3.2, no looser than llhttp reads them: origin-form
    /// (`/…`), asterisk-form (`*`), absolute-form (an alphabetic scheme, `://`, an
    /// authority, then a path or query), and for CONNECT only authority-form (`host:port`).
    /// Anything else — `x/`, `http:/x`, a bare host on GET — is refused (a target two hops
    /// read differently is a routing and policy bypass).
    static func isRequestTarget(_ t: UnsafeRawBufferPointer, connect: Bool) -> Bool {
        if connect { return !t.isEmpty && t.allSatisfy(isAuthorityByte) }
        guard let first = t.first else { return false }
        if first == UInt8(ascii: "/") { return true }
        if first == UInt8(ascii: "*") { return t.count == 1 }
        var i = 0
        while i < t.count, isAlpha(t[i]) { i += 1 }
        guard i > 0, i + 3 <= t.count, t[i] == UInt8(ascii: ":"), t[i + 1] == UInt8(ascii: "/"), t[i + 2] == UInt8(ascii: "/") else {
            return false
        }
        i += 3
        let authority = i
        while i < t.count, t[i] != UInt8(ascii: "/"), t[i] != UInt8(ascii: "?") {
            guard isAuthorityByte(t[i]) else { return false }
            i += 1
        }
        return i > authority
    }

    @inline(__always)
    static func isAlpha(_ b: UInt8) -> Bool { (b | 0x20) >= UInt8(ascii: "a") && (b | 0x20) <= UInt8(ascii: "z") }

    /// userinfo, host (IP-literal brackets too) and port bytes of an authority.
    static func isAuthorityByte(_ b: UInt8) -> Bool {
        if isAlpha(b) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) { return true }
        switch b {
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "!"), UInt8(ascii: "$"),
             UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"),
             UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "["),
             UInt8(ascii: "]"), UInt8(ascii: "%"):
            return true
        default:
            return false
        }
    }

    /// Parses `name: value CRLF` lines from `start` to the blank line that ends `bytes`.
    static func parseFields(_ bytes: ByteBuffer, from start: Int, into fields: inout [HTTP1Field], maxFields: Int) throws {
        try bytes.withUnsafeReadableBytes { p in
            var i = start
            let end = p.count - 2 // the final CRLF
            while i < end {
                guard fields.count < maxFields else { throw HTTP1RequestParser.Failure.tooManyFields }
                if p[i] == 32 || p[i] == 9 { throw HTTP1RequestParser.Failure.obsFold }
                let nameStart = i
                while i < end, p[i] != UInt8(ascii: ":") {
                    if p[i] == 32 || p[i] == 9 { throw HTTP1RequestParser.Failure.whitespaceBeforeColon }
                    guard isTokenByte(p[i]) else { throw HTTP1RequestParser.Failure.badFieldName }
                    i += 1
                }
                guard i < end, i > nameStart else { throw HTTP1RequestParser.Failure.badFieldName }
                let nameEnd = i
                i += 1
                while i < end, p[i] == 32 || p[i] == 9 { i += 1 }
                let valueStart = i
                var valueEnd = i
                while i < end, p[i] != 13 {
                    guard isFieldValueByte(p[i]) else {
                        throw p[i] == 10 ? HTTP1RequestParser.Failure.badLineEnding : HTTP1RequestParser.Failure.badFieldValue
                    }
                    if p[i] != 32 && p[i] != 9 { valueEnd = i + 1 }
                    i += 1
                }
                // Every line ends in CRLF: the head ends at the first CRLF CRLF, so a CR
                // here is followed by LF unless it is a bare CR.
                guard i + 1 < p.count, p[i] == 13, p[i + 1] == 10 else { throw HTTP1RequestParser.Failure.badLineEnding }
                i += 2
                fields.append(HTTP1Field(nameStart: Int32(nameStart), nameEnd: Int32(nameEnd),
                                         valueStart: Int32(valueStart), valueEnd: Int32(valueEnd)))
            }
        }
    }

    /// tchar (RFC 9110 §5.6.2).
    @inline(__always)
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// field-vchar, SP, HTAB (RFC 9110 §5.5): no CR, LF, NUL or other control byte.
    @inline(__always)
    static func isFieldValueByte(_ b: UInt8) -> Bool {
        b == 9 || (b >= 32 && b != 127)
    }

    // MARK: - reading it

    var method: ByteBufferView { bytes.readableBytesView[bytes.readerIndex..<(bytes.readerIndex + methodEnd)] }
    var target: ByteBufferView { bytes.readableBytesView[(bytes.readerIndex + targetStart)..<(bytes.readerIndex + targetEnd)] }

    func name(_ f: HTTP1Field) -> ByteBufferView { HTTP1Field.view(bytes, f.nameStart, f.nameEnd) }
    func value(_ f: HTTP1Field) -> ByteBufferView { HTTP1Field.view(bytes, f.valueStart, f.valueEnd) }

    static func nameIs(_ bytes: ByteBuffer, _ f: HTTP1Field, _ lowercased: StaticString) -> Bool {
        guard Int(f.nameEnd - f.nameStart) == lowercased.utf8CodeUnitCount else { return false }
        return bytes.withUnsafeReadableBytes { p in
            Self.equalsLowercased(UnsafeRawBufferPointer(rebasing: p[Int(f.nameStart)..<Int(f.nameEnd)]), lowercased)
        }
    }

    static func valueIs(_ bytes: ByteBuffer, _ f: HTTP1Field, _ lowercased: StaticString) -> Bool {
        bytes.withUnsafeReadableBytes { p in
            Self.equalsLowercased(UnsafeRawBufferPointer(rebasing: p[Int(f.valueStart)..<Int(f.valueEnd)]), lowercased)
        }
    }

    static func equalsLowercased(_ a: UnsafeRawBufferPointer, _ lowercased: StaticString) -> Bool {
        guard a.count == lowercased.utf8CodeUnitCount else { return false }
        let b = lowercased.utf8Start
        for i in 0..<a.count {
            let c = a[i] >= UInt8(ascii: "A") && a[i] <= UInt8(ascii: "Z") ? a[i] | 0x20 : a[i]
            if c != b[i] { return false }
        }
        return true
    }

    /// The comma-separated tokens of a field value, OWS trimmed.
    static func forEachToken(_ bytes: ByteBuffer, _ f: HTTP1Field, _ body: (UnsafeRawBufferPointer) -> Void) {
        bytes.withUnsafeReadableBytes { p in
            var i = Int(f.valueStart)
            let end = Int(f.valueEnd)
            while i < end {
                while i < end, p[i] == 32 || p[i] == 9 || p[i] == UInt8(ascii: ",") { i += 1 }
                let s = i
                while i < end, p[i] != UInt8(ascii: ",") { i += 1 }
                var e = i
                while e > s, p[e - 1] == 32 || p[e - 1] == 9 { e -= 1 }
                if e > s { body(UnsafeRawBufferPointer(rebasing: p[s..<e])) }
            }
        }
    }

    /// What a message's fields say about its framing and its connection.
    struct FramingFields {
        var contentLength: Int64?
        var chunked = false
        var close = false
        var keepAliveToken = false
        var hosts = 0
        /// An Upgrade field is present.
        var upgrade = false

        /// HTTP/1.1 stays open unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
        func keepAlive(minorVersion: Int) -> Bool { minorVersion == 1 ? !close : (keepAliveToken && !close) }
    }

    /// Reads the fields that decide framing (requests and responses alike): exactly one
    /// Content-Length of digits; Transfer-Encoding only as `chunked`, once — anything else
    /// (other codings, a list, a repeat) is how messages are smuggled past a peer that
    /// reads it differently; Connection's tokens; and how many Host fields there are.
    static func framingFields(_ bytes: ByteBuffer, _ fields: [HTTP1Field]) throws -> FramingFields {
        var r = FramingFields()
        var sawTE = false
        for f in fields {
            if nameIs(bytes, f, "content-length") {
                guard r.contentLength == nil else { throw HTTP1RequestParser.Failure.badContentLength }
                r.contentLength = try contentLength(bytes, f)
            } else if nameIs(bytes, f, "transfer-encoding") {
                guard !sawTE, valueIs(bytes, f, "chunked") else { throw HTTP1RequestParser.Failure.badTransferEncoding }
                sawTE = true
                r.chunked = true
            } else if nameIs(bytes, f, "connection") {
                forEachToken(bytes, f) { t in
                    if equalsLowercased(t, "close") { r.close = true }
                    if equalsLowercased(t, "keep-alive") { r.keepAliveToken = true }
                }
            } else if nameIs(bytes, f, "host") {
                r.hosts += 1
            } else if nameIs(bytes, f, "upgrade") {
                r.upgrade = true
            }
        }
        return r
    }

    /// 1*DIGIT and no more than Int64 holds.
    static func contentLength(_ bytes: ByteBuffer, _ f: HTTP1Field) throws -> Int64 {
        try bytes.withUnsafeReadableBytes { p in
            guard f.valueEnd > f.valueStart else { throw HTTP1RequestParser.Failure.badContentLength }
            var n: Int64 = 0
            for i in Int(f.valueStart)..<Int(f.valueEnd) {
                guard p[i] >= UInt8(ascii: "0"), p[i] <= UInt8(ascii: "9") else { throw HTTP1RequestParser.Failure.badContentLength }
                let (m, o1) = n.multipliedReportingOverflow(by: 10)
                let (s, o2) = m.addingReportingOverflow(Int64(p[i] - UInt8(ascii: "0")))
                guard !o1, !o2 else { throw HTTP1RequestParser.Failure.badContentLength }
                n = s
            }
            return n
        }
    }
}

// MARK: - for tests and the fuzzer

/// What a parser made of a byte stream, in a form that does not depend on how the bytes
/// were split: each request's head (method, target, fields), its whole body, its trailers;
/// then the failure, if one ended it.
struct ParsedStream: Equatable {
    struct Request: Equatable {
        var method = "", target = ""
        var fields: [String] = []
        var framing = HTTP1RequestHead.Framing.none
        var keepAlive = true
        var body: [UInt8] = []
        var trailers: [String] = []
        var complete = false
    }
    var requests: [Request] = []
    var failure: HTTP1RequestParser.Failure?
}

/// Feeds `bytes` to a fresh parser in pieces of `piece` bytes (0: all at once), the way a
/// connection's reads arrive: each read appended to what is left of the previous ones.
func parseStream(_ bytes: [UInt8], piece: Int = 0) -> ParsedStream {
    var parser = HTTP1RequestParser()
    var out = ParsedStream()
    var buffer = ByteBuffer()
    var offset = 0
    func text(_ v: ByteBufferView) -> String { String(decoding: v, as: UTF8.self) }
    while offset < bytes.count {
        let n = piece == 0 ? bytes.count : min(piece, bytes.count - offset)
        buffer.writeBytes(bytes[offset..<(offset + n)])
        offset += n
        do {
            while let event = try parser.parse(&buffer) {
                switch event {
                case .head(let h):
                    out.requests.append(.init(method: text(h.method), target: text(h.target),
                                              fields: h.fields.map { text(h.name($0)) + ":" + text(h.value($0)) },
                                              framing: h.framing, keepAlive: h.keepAlive))
                case .body(let b):
                    out.requests[out.requests.count - 1].body += Array(b.readableBytesView)
                case .end(let t):
                    out.requests[out.requests.count - 1].complete = true
                    if let t {
                        out.requests[out.requests.count - 1].trailers = t.fields.map { text(t.name($0)) }
                    }
                }
            }
        } catch let f as HTTP1RequestParser.Failure {
            out.failure = f
            return out
        } catch {
            fatalError("the parser threw \(error), not a Failure")
        }
        buffer.discardReadBytes()
    }
    return out
}

