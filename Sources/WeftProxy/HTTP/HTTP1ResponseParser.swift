import NIOCore
import NIOHTTP1

/// weft's parser for an upstream's HTTP/1.1 responses: the head in place as offsets over
/// the received bytes, the body as slices (HTTP1BodyReader, shared with requests). As
/// strict as the request parser where a proxy must be — CRLF only, no obs-fold, one
/// Content-Length of digits, Transfer-Encoding only as `chunked` and never with a length —
/// since a response framed two ways desynchronises a pooled connection: the rest of one
/// response would be read as the next one's.
///
/// It is told each request's method (`expect(_:)`), which decides the framing (RFC 9112
/// §6.3): no body for HEAD, 1xx, 204 and 304; a 2xx to CONNECT and a 101 switch the
/// connection to other bytes, which it leaves unread; interim 1xx responses are skipped
/// (as NIO's decoder drops them); a body with neither length nor chunks runs to the close.
struct HTTP1ResponseParser {
    enum Event {
        case head(HTTP1ResponseHead)
        case body(ByteBuffer)
        case end(HTTP1Trailers?)
    }

    typealias Failure = HTTP1RequestParser.Failure

    private enum State {
        case head(scanned: Int)
        case body(HTTP1BodyReader)
        case endPending
        /// After a 101 or a CONNECT's 2xx, or a response closing the connection: what
        /// follows is not a response.
        case done
        case failed(Failure)
    }

    let maxHeadBytes: Int
    let maxFields: Int
    private var state = State.head(scanned: 0)
    private var method = HTTPMethod.GET
    private var keepAlive = true
    private var fieldStorage: [HTTP1Field] = []

    init(maxHeadBytes: Int = 60 * 1024, maxFields: Int = 100) {
        self.maxHeadBytes = maxHeadBytes
        self.maxFields = maxFields
    }

    /// The method of the request the next response answers.
    mutating func expect(_ method: HTTPMethod) { self.method = method }

    /// What follows the last response is not one (a switch of protocols, or a close).
    var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    mutating func parse(_ buffer: inout ByteBuffer) throws -> Event? {
        switch state {
        case .failed(let f):
            throw f
        case .done:
            return nil
        case .endPending:
            state = keepAlive ? .head(scanned: 0) : .done
            return .end(nil)
        case .head(let scanned):
            do {
                return try parseHead(&buffer, scanned: scanned)
            } catch let f as Failure {
                state = .failed(f)
                throw f
            }
        case .body(var reader):
            let event: HTTP1BodyReader.Event?
            do {
                event = try reader.next(&buffer)
            } catch let f as Failure {
                state = .failed(f)
                throw f
            }
            switch event {
            case .data(let slice)?:
                state = .body(reader)
                return .body(slice)
            case .end(let trailers)?:
                state = keepAlive ? .head(scanned: 0) : .done
                return .end(trailers)
            case nil:
                state = .body(reader)
                return nil
            }
        }
    }

    /// The connection closed: a body running to the close is complete (its end); anything
    /// else cut short is the caller's to report.
    mutating func finish() -> Event? {
        guard case .body(var reader) = state, reader.finish() != nil else { return nil }
        state = .done
        return .end(nil)
    }

    private mutating func parseHead(_ buffer: inout ByteBuffer, scanned: Int) throws -> Event? {
        var scanned = scanned
        while true {
            let (section, checked) = try HTTP1BodyReader.takeSection(&buffer, scanned: scanned, maxBytes: maxHeadBytes)
            guard let bytes = section else {
                state = .head(scanned: checked)
                return nil
            }
            fieldStorage.removeAll(keepingCapacity: true)
            let head = try HTTP1ResponseHead(bytes: bytes, fields: &fieldStorage, maxFields: maxFields, method: method)
            // An interim response (100 Continue, 103 Early Hints) is not the answer: the
            // final one follows on the same connection.
            if head.status < 200, head.status != 101 {
                // HTTP/1.0 has no 1xx (RFC 9110 §15.2); llhttp refuses it too.
                guard head.minorVersion == 1 else { throw Failure.badStatusLine }
                scanned = 0
                continue
            }
            keepAlive = head.keepAlive
            switch head.framing {
            case nil, .length(0)?: state = .endPending
            case let framing?: state = .body(HTTP1BodyReader(framing, maxHeadBytes: maxHeadBytes, maxFields: maxFields))
            }
            return .head(head)
        }
    }
}

/// A response head parsed in place: the bytes as received and where each part lies.
struct HTTP1ResponseHead {
    let bytes: ByteBuffer
    let status: Int
    let minorVersion: Int
    let reasonStart: Int
    let reasonEnd: Int
    let fields: [HTTP1Field]
    /// nil: no body (HEAD, 1xx, 204, 304, a switch).
    let framing: HTTP1BodyReader.Framing?
    let keepAlive: Bool
    /// A 101, or a 2xx to CONNECT: the connection carries other bytes after this head.
    let switching: Bool

    init(bytes: ByteBuffer, fields storage: inout [HTTP1Field], maxFields: Int, method: HTTPMethod) throws {
        self.bytes = bytes
        var status = 0, minor = 0, reasonStart = 0, reasonEnd = 0, lineEnd = 0
        try bytes.withUnsafeReadableBytes { p in
            // HTTP-version SP 3DIGIT [SP reason-phrase] CRLF (the SP before an empty reason
            // is optional here, as in llhttp).
            guard p.count >= 14, p[0] == UInt8(ascii: "H"), p[1] == UInt8(ascii: "T"), p[2] == UInt8(ascii: "T"),
                  p[3] == UInt8(ascii: "P"), p[4] == UInt8(ascii: "/"), p[5] == UInt8(ascii: "1"), p[6] == UInt8(ascii: ".")
            else { throw HTTP1RequestParser.Failure.badVersion }
            switch p[7] {
            case UInt8(ascii: "0"): minor = 0
            case UInt8(ascii: "1"): minor = 1
            default: throw HTTP1RequestParser.Failure.badVersion
            }
            guard p[8] == 32 else { throw HTTP1RequestParser.Failure.badStatusLine }
            for i in 9..<12 {
                guard p[i] >= UInt8(ascii: "0"), p[i] <= UInt8(ascii: "9") else { throw HTTP1RequestParser.Failure.badStatusLine }
                status = status * 10 + Int(p[i] - UInt8(ascii: "0"))
            }
            guard status >= 100, status <= 599 else { throw HTTP1RequestParser.Failure.badStatusLine }
            // After the code: SP and the reason, or the line's end (an empty reason).
            var i = 12
            if p[i] == 32 {
                i += 1
            } else if p[i] != 13 {
                throw HTTP1RequestParser.Failure.badStatusLine
            }
            reasonStart = i
            // reason-phrase: HTAB, SP, VCHAR, obs-text.
            while i < p.count, p[i] != 13 {
                guard p[i] == 9 || p[i] >= 32, p[i] != 127 else { throw HTTP1RequestParser.Failure.badStatusLine }
                i += 1
            }
            guard i + 1 < p.count, p[i + 1] == 10 else { throw HTTP1RequestParser.Failure.badLineEnding }
            reasonEnd = i
            lineEnd = i + 2
        }
        self.status = status
        self.minorVersion = minor
        self.reasonStart = reasonStart
        self.reasonEnd = reasonEnd
        try HTTP1RequestHead.parseFields(bytes, from: lineEnd, into: &storage, maxFields: maxFields)
        self.fields = storage

        let decided = try HTTP1RequestHead.framingFields(bytes, storage)
        let chunked = decided.chunked, contentLength = decided.contentLength
        switching = status == 101 || (method == .CONNECT && status >= 200 && status < 300)
        var keepAlive = decided.keepAlive(minorVersion: minor)
        // Framed two ways is refused whether or not a body follows (a 2xx to CONNECT too):
        // llhttp refuses it on every response, and weft is never the more lenient of the two.
        if chunked && contentLength != nil { throw HTTP1RequestParser.Failure.contentLengthWithTransferEncoding }
        if switching || method == .HEAD || status < 200 || status == 204 || status == 304 {
            // No body, whatever the head says (a HEAD response's length is the GET's).
            framing = nil
        } else if chunked {
            guard minor == 1 else { throw HTTP1RequestParser.Failure.badTransferEncoding }
            framing = .chunked
        } else if let n = contentLength {
            framing = .length(n)
        } else {
            framing = .untilClose
            keepAlive = false
        }
        self.keepAlive = keepAlive && !switching
    }

    func name(_ f: HTTP1Field) -> ByteBufferView { HTTP1Field.view(bytes, f.nameStart, f.nameEnd) }
    func value(_ f: HTTP1Field) -> ByteBufferView { HTTP1Field.view(bytes, f.valueStart, f.valueEnd) }
    var reason: ByteBufferView { bytes.readableBytesView[(bytes.readerIndex + reasonStart)..<(bytes.readerIndex + reasonEnd)] }

    /// The head as NIO's type (HTTP/2 clients, WebSocket switches).
    func nioHead() -> HTTPResponseHead {
        HTTPResponseHead(version: minorVersion == 0 ? .http1_0 : .http1_1, status: nioStatus, headers: HTTP1Field.nioHeaders(bytes, fields))
    }

    /// A known code with its standard phrase (as NIO's decoder gives it); an unknown one
    /// with the upstream's.
    var nioStatus: HTTPResponseStatus {
        let s = HTTPResponseStatus(statusCode: status)
        if case .custom = s { return HTTPResponseStatus(statusCode: status, reasonPhrase: String(decoding: reason, as: UTF8.self)) }
        return s
    }

    /// The gRPC status in the head (a trailers-only response), if there is one.
    var grpcStatus: Int? {
        guard let f = fields.first(where: { HTTP1RequestHead.nameIs(bytes, $0, "grpc-status") }) else { return nil }
        return Int(String(decoding: value(f), as: UTF8.self))
    }
}

// MARK: - for the tests and the fuzzer

/// A whole stream of responses as weft's parser reads it, fed in `piece`-byte reads (0:
/// at once), with the methods of the requests they answer: each head, the body (the slices
/// joined), the end; "!" and the failure if it stopped on one, "|" where the connection
/// closed. However the bytes are split, the result is to be the same.
func parseResponses(_ bytes: [UInt8], methods: [HTTPMethod] = [], piece: Int = 0, close: Bool = false) -> [String] {
    var parser = HTTP1ResponseParser(maxHeadBytes: 1024, maxFields: 10)
    var methods = methods[...]
    parser.expect(methods.popFirst() ?? .GET)
    var out: [String] = []
    var buffer = ByteBuffer()
    var offset = 0
    func text(_ v: ByteBufferView) -> String { String(decoding: v, as: UTF8.self) }
    // Body bytes are joined before they are decoded: a character split between two reads
    // must read the same as one that was not.
    var body: [UInt8]?
    func flushBody() {
        if let b = body { out.append("body " + String(decoding: b, as: UTF8.self)) }
        body = nil
    }
    func record(_ e: HTTP1ResponseParser.Event) {
        if case .body(let b) = e {
            body = (body ?? []) + Array(b.readableBytesView)
            return
        }
        flushBody()
        switch e {
        case .head(let h):
            let fields = h.fields.map { text(h.name($0)) + ":" + text(h.value($0)) }
            out.append("\(h.status) \(text(h.reason)) [\(fields.joined(separator: ","))]" + (h.keepAlive ? "" : " close"))
        case .body:
            break
        case .end(let t):
            out.append("end" + (t.map { t in " " + t.fields.map { String(decoding: t.name($0), as: UTF8.self) }.joined(separator: ",") } ?? ""))
            parser.expect(methods.popFirst() ?? .GET)
        }
    }
    do {
        repeat {
            let n = piece == 0 ? bytes.count : min(piece, bytes.count - offset)
            buffer.writeBytes(bytes[offset..<(offset + n)])
            offset += n
            while let e = try parser.parse(&buffer) { record(e) }
        } while offset < bytes.count
        if close {
            flushBody()
            out.append("|")
            if let e = parser.finish() { record(e) }
        }
    } catch {
        flushBody()
        out.append("! \(error)")
    }
    flushBody()
    return out
}

func parseResponses(_ text: String, methods: [HTTPMethod] = [], piece: Int = 0, close: Bool = false) -> [String] {
    parseResponses(Array(text.utf8), methods: methods, piece: piece, close: close)
}
