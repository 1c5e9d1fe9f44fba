import NIOCore
import NIOHPACK
import NIOHTTP1

/// An upstream HTTP/1.1 connection's codec, in place of NIO's request encoder, header
/// validator and response decoder: requests are written straight into bytes (every field
/// checked as it is copied: a name that is not a token, or a value with a control byte,
/// is never sent — it is how a request would be split in two), responses are read by
/// weft's strict HTTP1ResponseParser. One request at a time, as the pool uses a
/// connection; the parser is told each request's method (HEAD and CONNECT frame the
/// response differently).
final class HTTP1ClientCodec: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ResponsePart
    typealias OutboundIn = RequestPart
    typealias OutboundOut = IOData

    /// What the codec delivers: a response head as weft's parser read it (fields as
    /// offsets into its bytes: whoever needs NIO's head makes it), the body, the end. An
    /// upstream HTTP/2 stream delivers the same parts, its head as the header block it
    /// received (`block`, with its status: whoever needs NIO's head makes it).
    enum ResponsePart {
        case received(HTTP1ResponseHead)
        case head(HTTPResponseHead)
        indirect case block(HPACKHeaders, status: Int)
        case body(ByteBuffer)
        case end(HTTPHeaders?)
    }

    /// What is written to the codec: NIO's request parts, or a head forwarded from the
    /// bytes a client sent (the received fields copied as they came, with the proxy's edits).
    enum RequestPart {
        case head(HTTPRequestHead)
        case forwarded(HTTP1RequestHead, HeadRewrite, method: HTTPMethod)
        case body(IOData)
        case end(HTTPHeaders?)

        init(_ part: HTTPClientRequestPart) {
            switch part {
            case .head(let h): self = .head(h)
            case .body(let b): self = .body(b)
            case .end(let t): self = .end(t)
            }
        }
    }

    /// A request the codec refused to write (a field no HTTP/1.1 message can carry).
    struct InvalidRequest: Error, CustomStringConvertible {
        let description: String
    }

    /// The pool's handler of the connection, handed the response parts by a call rather
    /// than through the pipeline, and writing its requests by `send`: a part passed as
    /// NIOAny costs a dynamic cast to unwrap (swift_dynamicCast, ~250 instructions) and a
    /// walk of the pipeline, each way. Cleared when the codec leaves the pipeline (the two
    /// hold each other). Without one (the codec alone, in tests) parts go down the pipeline.
    var receiver: UpstreamHTTP1Handler?
    private var context: ChannelHandlerContext?
    private var parser = HTTP1ResponseParser()
    private var pending: ByteBuffer?
    private var failed = false
    private var chunked = false
    /// Reused for request heads and chunk lines once the socket has let go of it.
    private var scratch = ByteBuffer()

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        scratch = context.channel.allocator.buffer(capacity: 512)
    }

    /// After a 101 the bytes already read are the new protocol's: they go on to what
    /// replaces the codec (a WebSocket's first frames may come with the 101).
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        receiver = nil
        if let rest = pending, rest.readableBytes > 0, !failed {
            pending = nil
            context.fireChannelRead(NIOAny(rest))
        }
    }

    // MARK: responses

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var bytes = unwrapInboundIn(data)
        if pending == nil {
            pending = bytes
        } else {
            pending!.writeBuffer(&bytes)
        }
        while pending != nil, !failed, !parser.isDone {
            let event: HTTP1ResponseParser.Event?
            do {
                event = try parser.parse(&pending!)
            } catch {
                failed = true
                pending = nil
                context.fireErrorCaught(error)
                return
            }
            guard let event else {
                if pending!.readableBytes == 0 { pending = nil }
                return
            }
            switch event {
            case .head(let h):
                deliver(.received(h), context)
            case .body(let b):
                deliver(.body(b), context)
            case .end(let t):
                if pending?.readableBytes == 0 { pending = nil }
                deliver(.end(t?.nioHeaders()), context)
            }
        }
    }

    private func deliver(_ part: ResponsePart, _ context: ChannelHandlerContext) {
        if let receiver { receiver.received(part) } else { context.fireChannelRead(wrapInboundOut(part)) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A body that runs to the close is complete now.
        if !failed, case .end(let t)? = parser.finish() {
            deliver(.end(t?.nioHeaders()), context)
        }
        context.fireChannelInactive()
    }

    // MARK: requests

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        send(unwrapOutboundIn(data), promise: promise)
    }

    /// Writes a request part (the receiver calls this directly).
    func send(_ part: RequestPart, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch part {
        case .head(let head):
            do {
                try writeHead(head)
            } catch {
                promise?.fail(error)
                context.fireErrorCaught(error)
                return
            }
            parser.expect(head.method)
            context.write(wrapOutboundOut(.byteBuffer(scratch)), promise: promise)
        case .forwarded(let received, let rewrite, let method):
            do {
                try writeForwarded(received, rewrite, method: method)
            } catch {
                promise?.fail(error)
                context.fireErrorCaught(error)
                return
            }
            parser.expect(method)
            context.write(wrapOutboundOut(.byteBuffer(scratch)), promise: promise)
        case .body(let part):
            if chunked {
                HTTP1FieldWriter.writeChunk(part, scratch: &scratch, context: context, promise: promise)
            } else {
                context.write(wrapOutboundOut(part), promise: promise)
            }
        case .end(let trailers):
            if chunked {
                do {
                    try HTTP1FieldWriter.lastChunk(trailers, into: &scratch, checked: true)
                } catch {
                    promise?.fail(error)
                    context.fireErrorCaught(error)
                    return
                }
                chunked = false
                context.write(wrapOutboundOut(.byteBuffer(scratch)), promise: promise)
            } else if let promise {
                context.write(wrapOutboundOut(.byteBuffer(context.channel.allocator.buffer(capacity: 0))), promise: promise)
            }
        }
    }

    /// How a request is framed, as NIO's encoder frames one: no body for TRACE; a body for
    /// POST, PUT and PATCH (by its Content-Length, else chunked); other methods as their
    /// fields say.
    private struct Framing {
        var addChunked: Bool
        var dropLength: Bool
        var dropTE: Bool

        init(method: HTTPMethod, hasLength: Bool, teChunked: Bool, chunked: inout Bool) {
            switch method {
            case .TRACE:
                addChunked = false
                chunked = false
            case .POST, .PUT, .PATCH:
                addChunked = !hasLength
                chunked = !hasLength
            default:
                addChunked = false
                chunked = !hasLength && teChunked
            }
            dropLength = method == .TRACE
            dropTE = method == .TRACE || hasLength || addChunked
        }
    }

    /// The request line and fields into `scratch`.
    private func writeHead(_ head: HTTPRequestHead) throws {
        let framing = Framing(method: head.method, hasLength: head.headers.contains(name: "content-length"),
                              teChunked: head.headers.first(name: "transfer-encoding") == "chunked", chunked: &chunked)
        try writeRequestLine(head.method, head.uri, minorVersion: head.version.minor)
        for (name, value) in head.headers {
            if framing.dropLength, HTTP1ServerCodec.nameIs(name, "content-length") { continue }
            if framing.dropTE, HTTP1ServerCodec.nameIs(name, "transfer-encoding") { continue }
            try HTTP1FieldWriter.write(name, value, to: &scratch, checked: true)
        }
        if framing.addChunked { scratch.writeStaticString("transfer-encoding: chunked\r\n") }
        scratch.writeStaticString("\r\n")
    }

    /// A received head sent on with the proxy's edits: each run of kept fields is copied
    /// from the received bytes in one write (weft's parser has checked them; only what the
    /// proxy adds is checked here), then the added fields. The same request writeHead
    /// writes for `rewrite.headers()`: received Transfer-Encoding is hop-by-hop, so only
    /// an added one counts.
    private func writeForwarded(_ received: HTTP1RequestHead, _ rewrite: HeadRewrite, method: HTTPMethod) throws {
        try writeRequestLine(method, rewrite.target, minorVersion: 1)
        // Only TRACE drops a Content-Length (Framing.dropLength): the copy says whether one went out.
        let copiedLength = rewrite.copyKept(received.bytes, received.fields, dropLength: method == .TRACE, into: &scratch)
        let framing = Framing(method: method, hasLength: copiedLength || rewrite.adds("content-length"),
                              teChunked: rewrite.added("transfer-encoding") == "chunked", chunked: &chunked)
        try rewrite.forEachAdded { name, value in
            if framing.dropLength, HTTP1ServerCodec.nameIs(name, "content-length") { return }
            if framing.dropTE, HTTP1ServerCodec.nameIs(name, "transfer-encoding") { return }
            try HTTP1FieldWriter.write(name, value, to: &scratch, checked: true)
        }
        if framing.addChunked { scratch.writeStaticString("transfer-encoding: chunked\r\n") }
        scratch.writeStaticString("\r\n")
    }

    private func writeRequestLine(_ method: HTTPMethod, _ target: String, minorVersion: Int) throws {
        scratch.clear()
        scratch.writeString(method.rawValue)
        scratch.writeStaticString(" ")
        var uri = target
        guard !uri.isEmpty, uri.withUTF8({ $0.allSatisfy { $0 > 32 && $0 < 127 } }) else {
            throw InvalidRequest(description: "request target \(target.debugDescription) cannot be sent over HTTP/1.1")
        }
        scratch.writeString(uri)
        scratch.writeStaticString(minorVersion == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
    }
}
