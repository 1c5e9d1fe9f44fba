import NIOCore
import NIOHTTP1

/// Writes HTTP/1 header fields into a head's bytes for both codecs: each field copied in
/// one write (name, ": ", value, CRLF), checked on the same pass when it is to be sent to
/// an upstream. Writing the four pieces with one ByteBuffer call each cost ~1.6k
/// instructions a field (callgrind, weft-proxy-bench); one copy of the bytes is the floor.
enum HTTP1FieldWriter {
    /// A field that cannot be sent as it is: a name that is not a token, or a value with a
    /// control byte (CR, LF, NUL...) — how one message would be split in two.
    struct Invalid: Error, CustomStringConvertible {
        let name: String
        var description: String { "header field \(name.debugDescription) cannot be sent over HTTP/1.1" }
    }

    static func write(_ name: String, _ value: String, to buffer: inout ByteBuffer, checked: Bool) throws {
        var name = name, value = value
        try name.withUTF8 { n in
            try value.withUTF8 { v in
                if checked {
                    guard !n.isEmpty, isToken(n), isFieldValue(v) else { throw Invalid(name: String(decoding: n, as: UTF8.self)) }
                }
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: n.count + v.count + 4) { out in
                    var i = 0
                    UnsafeMutableRawBufferPointer(rebasing: out[i..<(i + n.count)]).copyMemory(from: UnsafeRawBufferPointer(n))
                    i += n.count
                    out[i] = UInt8(ascii: ":")
                    out[i + 1] = UInt8(ascii: " ")
                    i += 2
                    UnsafeMutableRawBufferPointer(rebasing: out[i..<(i + v.count)]).copyMemory(from: UnsafeRawBufferPointer(v))
                    i += v.count
                    out[i] = 13
                    out[i + 1] = 10
                    return i + 2
                }
            }
        }
    }

    @inline(__always)
    static func isToken(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        for b in bytes where !HTTP1RequestHead.isTokenByte(b) { return false }
        return true
    }

    @inline(__always)
    static func isFieldValue(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        for b in bytes where !HTTP1RequestHead.isFieldValueByte(b) { return false }
        return true
    }
}

extension HTTP1FieldWriter {
    static let crlf: ByteBuffer = {
        var b = ByteBufferAllocator().buffer(capacity: 2)
        b.writeStaticString("\r\n")
        return b
    }()

    /// One part of a chunked body, framed: its size line (written into `scratch`), the
    /// bytes, CRLF. An empty part is not framed — a zero-size chunk would end the body.
    /// For handlers whose outbound type is IOData.
    static func writeChunk(_ part: IOData, scratch: inout ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard part.readableBytes > 0 else {
            context.write(NIOAny(part), promise: promise)
            return
        }
        scratch.clear()
        scratch.writeString(String(part.readableBytes, radix: 16))
        scratch.writeStaticString("\r\n")
        context.write(NIOAny(IOData.byteBuffer(scratch)), promise: nil)
        context.write(NIOAny(part), promise: nil)
        context.write(NIOAny(IOData.byteBuffer(crlf)), promise: promise)
    }

    /// The last chunk and the trailer section, into `scratch`.
    static func lastChunk(_ trailers: HTTPHeaders?, into scratch: inout ByteBuffer, checked: Bool) throws {
        scratch.clear()
        scratch.writeStaticString("0\r\n")
        for (name, value) in trailers ?? [:] { try write(name, value, to: &scratch, checked: checked) }
        scratch.writeStaticString("\r\n")
    }
}
