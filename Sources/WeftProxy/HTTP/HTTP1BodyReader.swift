import NIOCore

/// The body of an HTTP/1.1 message after its head, read as its framing says: the bytes
/// handed on as slices of what was received (chunk framing removed), then the end, with
/// the trailer fields of a chunked body. Shared by the request and the response parser.
struct HTTP1BodyReader {
    enum Framing: Equatable {
        case length(Int64)
        case chunked
        /// To the connection's close (a response with neither length nor chunks).
        case untilClose
    }

    enum Event {
        case data(ByteBuffer)
        case end(HTTP1Trailers?)
    }

    private enum State {
        case fixed(remaining: Int64)
        case chunkSize
        case chunkData(remaining: Int64)
        case chunkDataEnd
        /// After the last chunk: trailer fields until an empty line.
        case trailers(scanned: Int)
        case untilClose
        case ended
    }

    private var state: State
    private let maxHeadBytes: Int
    private let maxFields: Int

    /// Longest chunk-size line (size and extensions) accepted; llhttp has no limit, the
    /// proxy does (a chunk line is read into memory before any of it is forwarded).
    static let maxChunkLine = 4096

    init(_ framing: Framing, maxHeadBytes: Int, maxFields: Int) {
        switch framing {
        case .length(let n): state = .fixed(remaining: n)
        case .chunked: state = .chunkSize
        case .untilClose: state = .untilClose
        }
        self.maxHeadBytes = maxHeadBytes
        self.maxFields = maxFields
    }

    /// The next event the buffer completes, consuming its bytes; nil when more are needed.
    /// Throws a malformed chunk (`badChunk`) or trailer section.
    mutating func next(_ buffer: inout ByteBuffer) throws -> Event? {
        switch state {
        case .ended:
            return nil
        case .fixed(let remaining):
            if remaining == 0 {
                state = .ended
                return .end(nil)
            }
            guard let (slice, left) = Self.take(&buffer, remaining: remaining) else { return nil }
            state = .fixed(remaining: left)
            return .data(slice)
        case .untilClose:
            guard buffer.readableBytes > 0 else { return nil }
            return .data(buffer.readSlice(length: buffer.readableBytes)!)
        case .chunkSize:
            guard let size = try Self.readChunkSize(&buffer) else { return nil }
            state = size == 0 ? .trailers(scanned: 0) : .chunkData(remaining: size)
            return try next(&buffer)
        case .chunkData(let remaining):
            guard let (slice, left) = Self.take(&buffer, remaining: remaining) else { return nil }
            state = left == 0 ? .chunkDataEnd : .chunkData(remaining: left)
            return .data(slice)
        case .chunkDataEnd:
            guard buffer.readableBytes >= 2 else {
                if buffer.readableBytes == 1, buffer.readableBytesView.first != UInt8(ascii: "\r") { throw HTTP1RequestParser.Failure.badChunk }
                return nil
            }
            guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw HTTP1RequestParser.Failure.badChunk }
            state = .chunkSize
            return try next(&buffer)
        case .trailers(let scanned):
            return try trailers(&buffer, scanned: scanned)
        }
    }

    /// The connection closed: a body delimited by the close is complete; any other body
    /// is cut (nil: the caller reports the truncation).
    mutating func finish() -> Event? {
        guard case .untilClose = state else { return nil }
        state = .ended
        return .end(nil)
    }

    private mutating func trailers(_ buffer: inout ByteBuffer, scanned: Int) throws -> Event? {
        // No trailers: the last chunk is followed directly by an empty line.
        if scanned == 0, buffer.readableBytesView.first == 13 {
            guard buffer.readableBytes >= 2 else { return nil }
            guard buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) == 0x0D0A else { throw HTTP1RequestParser.Failure.badChunk }
            buffer.moveReaderIndex(forwardBy: 2)
            state = .ended
            return .end(nil)
        }
        let (section, checked) = try Self.takeSection(&buffer, scanned: scanned, maxBytes: maxHeadBytes)
        guard let bytes = section else {
            state = .trailers(scanned: checked)
            return nil
        }
        var fields: [HTTP1Field] = []
        try HTTP1RequestHead.parseFields(bytes, from: 0, into: &fields, maxFields: maxFields)
        state = .ended
        return .end(HTTP1Trailers(bytes: bytes, fields: fields))
    }

    /// As much of `remaining` body bytes as the buffer holds, as a slice, and what is left
    /// after it; nil when the buffer is empty.
    private static func take(_ buffer: inout ByteBuffer, remaining: Int64) -> (ByteBuffer, Int64)? {
        guard buffer.readableBytes > 0 else { return nil }
        let n = Int(min(Int64(buffer.readableBytes), remaining))
        return (buffer.readSlice(length: n)!, remaining - Int64(n))
    }

    // MARK: - shared with the heads

    /// A head or trailer section through its blank line, sliced off the buffer — nil when
    /// it is not all here yet — and how far the bytes are checked (where the next look
    /// goes on). Either way, more than `maxBytes` is refused.
    static func takeSection(_ buffer: inout ByteBuffer, scanned: Int, maxBytes: Int) throws -> (ByteBuffer?, Int) {
        let (found, checked) = try sectionEnd(in: buffer, from: scanned)
        guard let end = found else {
            if buffer.readableBytes > maxBytes { throw HTTP1RequestParser.Failure.headTooLarge }
            return (nil, checked)
        }
        if end > maxBytes { throw HTTP1RequestParser.Failure.headTooLarge }
        return (buffer.readSlice(length: end)!, end)
    }

    /// Where a head (or trailer section) ends — the length through its CRLF CRLF — if the
    /// buffer holds the end, and how far the bytes are checked (where the next call goes
    /// on). Every CR must be followed by LF and every LF preceded by CR: a bare one is
    /// refused at once, not when the head is complete (llhttp does the same).
    static func sectionEnd(in buffer: ByteBuffer, from: Int) throws -> (Int?, Int) {
        try buffer.withUnsafeReadableBytes { p -> (Int?, Int) in
            var i = from
            let n = p.count
            while i < n {
                switch p[i] {
                case 13:
                    guard i + 1 < n else { return (nil, i) }
                    guard p[i + 1] == 10 else { throw HTTP1RequestParser.Failure.badLineEnding }
                    if i >= 2, p[i - 2] == 13, p[i - 1] == 10 { return (i + 2, i + 2) }
                    i += 2
                case 10:
                    throw HTTP1RequestParser.Failure.badLineEnding
                default:
                    i += 1
                }
            }
            return (nil, i)
        }
    }

    /// A chunk-size line off the buffer: the size, or nil until the whole line is here.
    static func readChunkSize(_ buffer: inout ByteBuffer) throws -> Int64? {
        let line: Int? = buffer.withUnsafeReadableBytes { p in
            p.prefix(maxChunkLine + 2).firstIndex(of: 10)
        }
        guard let lf = line else {
            if buffer.readableBytes > maxChunkLine + 1 { throw HTTP1RequestParser.Failure.badChunk }
            return nil
        }
        let size: Int64 = try buffer.withUnsafeReadableBytes { p in
            guard lf >= 2, p[lf - 1] == 13 else { throw HTTP1RequestParser.Failure.badChunk }
            var size: Int64 = 0
            var i = 0
            while i < lf - 1, let d = hexValue(p[i]) {
                guard size <= (Int64.max >> 4) else { throw HTTP1RequestParser.Failure.badChunk }
                size = size << 4 | Int64(d)
                i += 1
            }
            guard i > 0, i <= 16 else { throw HTTP1RequestParser.Failure.badChunk }
            // Chunk extensions are allowed and ignored, in their grammar only
            // (`;token[=token|quoted-string]`, RFC 9112 §7.1.1, as llhttp reads them).
            guard isChunkExtensions(UnsafeRawBufferPointer(rebasing: p[i..<(lf - 1)])) else { throw HTTP1RequestParser.Failure.badChunk }
            return size
        }
        buffer.moveReaderIndex(forwardBy: lf + 1)
        return size
    }

    static func isChunkExtensions(_ e: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        func token() -> Bool {
            let s = i
            while i < e.count, HTTP1RequestHead.isTokenByte(e[i]) { i += 1 }
            return i > s
        }
        while i < e.count {
            guard e[i] == UInt8(ascii: ";") else { return false }
            i += 1
            guard token() else { return false }
            guard i < e.count, e[i] == UInt8(ascii: "=") else { continue }
            i += 1
            if i < e.count, e[i] == UInt8(ascii: "\"") {
                i += 1
                while i < e.count, e[i] != UInt8(ascii: "\"") {
                    if e[i] == UInt8(ascii: "\\") { i += 1 }
                    guard i < e.count, HTTP1RequestHead.isFieldValueByte(e[i]) else { return false }
                    i += 1
                }
                guard i < e.count else { return false }
                i += 1
            } else if !token() {
                return false
            }
        }
        return true
    }

    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
