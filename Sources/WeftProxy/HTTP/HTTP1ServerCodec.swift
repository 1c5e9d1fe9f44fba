import NIOCore
import NIOHTTP1

/// The HTTP/1.1 client connection's codec, in place of NIO's request decoder, response
/// encoder and pipelining handler: weft's strict parser reads requests, responses are
/// written straight into bytes, and one request is served at a time — the bytes of a
/// pipelined request wait, unparsed and unread past, until the response before it is
/// written (NIO's pipelining handler does the same with parsed parts).
///
/// The socket stays registered for reading while a response is awaited, until bytes of a
/// next request arrive: a keep-alive client sends nothing then, and holding the read
/// would cost two epoll_ctl calls per request (NIO drops read interest and takes it up
/// again). It also sees a client's FIN at once: a half-closed client gets the responses
/// to the requests it sent, then the connection closes.
///
/// The bench's floor rows put NIO's HTTP/1 codec at half of HTTP/1.1's rate (README, L7
/// proxying); most of it is per-part pipeline traffic and header Strings, not llhttp.
final class HTTP1ServerCodec: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = Part
    typealias OutboundOut = IOData

    /// What is written to the codec: NIO's response parts, or a head forwarded from the
    /// bytes an upstream sent (its received fields copied as they came, with the edits).
    enum Part {
        case head(HTTPResponseHead)
        case forwarded(HTTP1ResponseHead, HeadRewrite, status: HTTPResponseStatus, minorVersion: Int)
        case body(IOData)
        case end(HTTPHeaders?)

        init(_ part: HTTPServerResponsePart) {
            switch part {
            case .head(let h): self = .head(h)
            case .body(let b): self = .body(b)
            case .end(let t): self = .end(t)
            }
        }
    }

    /// The connection's proxy handler, handed the request parts by a call rather than
    /// through the pipeline, and writing its responses by `send`: a part passed as NIOAny
    /// costs a dynamic cast to unwrap (swift_dynamicCast) and a walk of the pipeline, each
    /// way. Cleared when either leaves the pipeline (the two hold each other). Without one
    /// (the codec alone, in tests) parts go through the pipeline.
    var receiver: HTTP1ProxyHandler?
    private var context: ChannelHandlerContext?
    private var parser: HTTP1RequestParser
    /// Received bytes not yet parsed (nil when none: the receive buffer is not kept).
    private var pending: ByteBuffer?
    private var failed = false
    /// The request read last asked to switch protocols (Upgrade, CONNECT): what the client
    /// sends after it is not HTTP/1, and is never parsed as a request (the proxy closes
    /// the connection after the response, or a WebSocket splice takes it over).
    private var switching = false
    private var upgradeRequested = false
    private var attached = false
    /// The current request's end has gone up / its response's end has been written. Bytes
    /// after a request wait while the first is true and the second is not.
    private var requestDone = false
    private var responseDone = false
    private var delivering = false
    private var resumeScheduled = false
    private var readPending = false
    /// A request's head has gone up and its end not yet.
    private var inRequest = false
    /// The client half-closed (FIN): what it sent is answered, then the connection closes.
    private var inputClosed = false

    // The response being written.
    private var method = HTTPMethod.GET
    private var chunked = false
    private var suppressBody = false
    /// Scratch for response heads and chunk lines: once the socket has written the last
    /// one, its storage is unique again and is reused instead of allocating per response.
    private var scratch = ByteBuffer()
    /// The last request head read, as received: the proxy handler takes it with the NIO
    /// head, to send its fields upstream as they came.
    private var receivedHead: HTTP1RequestHead?

    /// How long a connection being closed may take to write out what it still holds.
    let drainTimeout: TimeAmount

    init(maxHeadBytes: Int, maxFields: Int, drainTimeout: TimeAmount = .minutes(5)) {
        parser = HTTP1RequestParser(maxHeadBytes: maxHeadBytes, maxFields: maxFields)
        self.drainTimeout = drainTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        attached = true
        scratch = context.channel.allocator.buffer(capacity: 256)
    }

    /// What was received and not parsed is dropped: only a WebSocket switch removes the
    /// codec, and a client must wait for the 101 before it sends frames (RFC 6455 §4.1).
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        receiver = nil
        attached = false
        pending = nil
    }

    // MARK: requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed, !switching else { return }
        var bytes = unwrapInboundIn(data)
        if pending == nil {
            pending = bytes
        } else {
            pending!.writeBuffer(&bytes)
        }
        deliver(context)
    }

    /// The head of the request whose `.head` part is being delivered (nil at any other time).
    func takeReceivedHead() -> HTTP1RequestHead? {
        defer { receivedHead = nil }
        return receivedHead
    }

    private var waitingForResponse: Bool { requestDone && !responseDone }

    /// Parses and hands on what the received bytes complete, up to a request's end.
    private func deliver(_ context: ChannelHandlerContext) {
        guard !delivering else { return }
        delivering = true
        defer { delivering = false }
        while attached, !failed, !switching, !waitingForResponse, pending != nil, context.channel.isActive {
            let event: HTTP1RequestParser.Event?
            do {
                event = try parser.parse(&pending!)
            } catch let f as HTTP1RequestParser.Failure {
                fail(context, f)
                return
            } catch {
                fail(context, .badRequestLine)
                return
            }
            guard let event else {
                // More bytes are needed; after a request that closes the connection nothing
                // more is read, so nothing is kept either.
                if pending!.readableBytes == 0 || parser.isClosed { pending = nil }
                break
            }
            switch event {
            case .head(let h):
                // RFC 9112 §3.2: more than one Host is a 400, not a guess at which one a
                // route, a policy and the workload would each read.
                guard h.hostCount <= 1 else {
                    fail(context, .multipleHosts)
                    return
                }
                requestDone = false
                responseDone = false
                inRequest = true
                let head = h.nioHead()
                method = head.method
                upgradeRequested = method == .CONNECT || h.upgrade
                receivedHead = h
                hand(.head(head), context)
                receivedHead = nil
            case .body(let b):
                hand(.body(b), context)
            case .end(let t):
                requestDone = true
                inRequest = false
                if upgradeRequested {
                    switching = true
                    pending = nil
                }
                // Nothing left after a request's end: the receive buffer is let go (the
                // parser needs no call with no bytes until the next ones come).
                if pending?.readableBytes == 0 { pending = nil }
                hand(.end(t?.nioHeaders()), context)
            }
        }
    }

    private func hand(_ part: HTTPServerRequestPart, _ context: ChannelHandlerContext) {
        if let receiver { receiver.received(part) } else { context.fireChannelRead(wrapInboundOut(part)) }
    }

    /// The request cannot be read: the proxy handler answers it (400 or 431) and closes;
    /// nothing more is parsed.
    private func fail(_ context: ChannelHandlerContext, _ f: HTTP1RequestParser.Failure) {
        failed = true
        pending = nil
        context.fireErrorCaught(f)
    }

    /// Reads are held only while a response is awaited and bytes after its request are
    /// already here (bounding what one connection buffers to what a read brings), or the
    /// request switches protocols (what follows is not for this codec to read).
    func read(context: ChannelHandlerContext) {
        if waitingForResponse && (pending != nil || upgradeRequested) {
            readPending = true
        } else {
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let e = event as? ChannelEvent, e == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        inputClosed = true
        closeIfDone(context)
    }

    /// After the client's FIN: closes once no request is being read or answered. A request
    /// head or body cut short can never complete; complete requests still buffered are
    /// served first (a response's end brings the next one up: resume).
    private func closeIfDone(_ context: ChannelHandlerContext) {
        guard inputClosed, attached, !switching, !waitingForResponse else { return }
        if !inRequest {
            deliver(context)
            if waitingForResponse { return }
        }
        closeAfterWrites(context)
    }

    /// Closes once what was written has gone to the socket: NIO's close fails writes still
    /// pending (a large response to a slow reader would be cut short). A client that stops
    /// reading altogether is closed anyway after `drainTimeout` (Envoy bounds its delayed
    /// close the same way).
    func closeAfterWrites(_ context: ChannelHandlerContext) {
        let channel = context.channel
        let written = context.eventLoop.makePromise(of: Void.self)
        let deadline = context.eventLoop.assumeIsolated().scheduleTask(in: drainTimeout) { channel.close(promise: nil) }
        context.writeAndFlush(NIOAny(IOData.byteBuffer(channel.allocator.buffer(capacity: 0))), promise: written)
        written.futureResult.whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    // MARK: responses

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        write(unwrapOutboundIn(data), context, promise: promise)
    }

    /// Writes a response part (the receiver calls this directly).
    func send(_ part: Part) {
        if let context { write(part, context, promise: nil) }
    }

    private func write(_ part: Part, _ context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch part {
        case .head(let head):
            writeHead(context, head, promise: promise)
        case .forwarded(let received, let rewrite, let status, let minor):
            writeForwarded(context, received, rewrite, status: status, minorVersion: minor, promise: promise)
        case .body(let part):
            if suppressBody {
                promise?.fail(NIOHTTPResponseEncoderError.responseBodyNotAllowed)
            } else if chunked {
                HTTP1FieldWriter.writeChunk(part, scratch: &scratch, context: context, promise: promise)
            } else {
                context.write(wrapOutboundOut(part), promise: promise)
            }
        case .end(let trailers):
            if chunked {
                // Trailers go out as given (an upstream's were parsed strictly).
                try? HTTP1FieldWriter.lastChunk(trailers, into: &scratch, checked: false)
                context.write(wrapOutboundOut(.byteBuffer(scratch)), promise: promise)
            } else if let promise {
                context.write(wrapOutboundOut(.byteBuffer(context.channel.allocator.buffer(capacity: 0))), promise: promise)
            }
            chunked = false
            suppressBody = false
            responseDone = true
            resume(context)
        }
    }

    /// The status line and fields, framed as NIO's encoder frames them: no body for HEAD,
    /// CONNECT, 1xx, 204 and 304; else by Content-Length when given, else chunked
    /// (HTTP/1.1) or to the connection's close (HTTP/1.0).
    private func writeHead(_ context: ChannelHandlerContext, _ head: HTTPResponseHead, promise: EventLoopPromise<Void>?) {
        let hasBody = writeStatusLine(head.status, minorVersion: head.version.minor)
        let hasLength = hasBody && head.headers.contains(name: "content-length")
        let chunk = startBody(head.status, hasBody: hasBody, hasLength: hasLength, minorVersion: head.version.minor)
        for (name, value) in head.headers {
            // The framing fields are the codec's: what the message's framing says, nothing else.
            if !hasBody || hasLength || chunk, Self.nameIs(name, "transfer-encoding") { continue }
            if !hasBody, Self.nameIs(name, "content-length") { continue }
            try? HTTP1FieldWriter.write(name, value, to: &scratch, checked: false)
        }
        if chunk { scratch.writeStaticString("transfer-encoding: chunked\r\n") }
        scratch.writeStaticString("\r\n")
        context.write(wrapOutboundOut(.byteBuffer(scratch)), promise: promise)
    }

    /// An upstream's head passed on with the proxy's edits: runs of kept fields copied from
    /// the received bytes (checked by weft's response parser when they came), then the
    /// added ones; framed as writeHead frames `rewrite.headers()` (a received
    /// Transfer-Encoding is hop-by-hop, so only a Content-Length can decide it).
    private func writeForwarded(_ context: ChannelHandlerContext, _ received: HTTP1ResponseHead, _ rewrite: HeadRewrite,
                                status: HTTPResponseStatus, minorVersion: Int, promise: EventLoopPromise<Void>?) {
        let hasBody = writeStatusLine(status, minorVersion: minorVersion)
        let sawLength = rewrite.copyKept(received.bytes, received.fields, dropLength: !hasBody, into: &scratch)
        let hasLength = hasBody && (sawLength || rewrite.adds("content-length"))
        let chunk = startBody(status, hasBody: hasBody, hasLength: hasLength, minorVersion: minorVersion)
        rewrite.forEachAdded { name, value in
            if !hasBody || hasLength || chunk, Self.nameIs(name, "transfer-encoding") { return }
            if !hasBody, Self.nameIs(name, "content-length") { return }
            try? HTTP1FieldWriter.write(name, value, to: &scratch, checked: false)
        }
        if chunk { scratch.writeStaticString("transfer-encoding: chunked\r\n") }
        scratch.writeStaticString("\r\n")
        context.write(wrapOutboundOut(.byteBuffer(scratch)), promise: promise)
    }

    /// The status line into `scratch`; returns whether the response has a body.
    private func writeStatusLine(_ status: HTTPResponseStatus, minorVersion: Int) -> Bool {
        scratch.clear()
        scratch.writeStaticString(minorVersion == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        scratch.writeString(String(status.code))
        scratch.writeStaticString(" ")
        scratch.writeString(status.reasonPhrase)
        scratch.writeStaticString("\r\n")
        return method != .CONNECT && status.mayHaveResponseBody
    }

    /// Sets how the response's body parts are written; returns whether it is chunked.
    private func startBody(_ status: HTTPResponseStatus, hasBody: Bool, hasLength: Bool, minorVersion: Int) -> Bool {
        let code = status.code
        let interim = code >= 100 && code < 200 && code != 101
        let chunk = hasBody && !hasLength && minorVersion >= 1
        if !interim {
            suppressBody = method == .HEAD || method == .CONNECT
            chunked = chunk && !suppressBody
        }
        return chunk
    }

    static func nameIs(_ name: String, _ lowercased: StaticString) -> Bool {
        var name = name
        return name.withUTF8 { HTTP1RequestHead.equalsLowercased(UnsafeRawBufferPointer($0), lowercased) }
    }

    /// After a response's end: the next request, if its bytes are here, is parsed — on the
    /// next loop tick, not inside the write that ended this one (the handler writing is
    /// still finishing the exchange) — and a read held back goes out.
    private func resume(_ context: ChannelHandlerContext) {
        guard pending != nil || inputClosed else {
            releaseRead(context)
            return
        }
        guard !resumeScheduled else { return }
        resumeScheduled = true
        // After a FIN the close, too, waits for the next tick: the response's last bytes
        // are flushed after this write.
        context.eventLoop.assumeIsolated().execute {
            self.resumeScheduled = false
            guard self.attached else { return }
            self.deliver(context)
            self.releaseRead(context)
            self.closeIfDone(context)
        }
    }

    private func releaseRead(_ context: ChannelHandlerContext) {
        if readPending, !waitingForResponse {
            readPending = false
            context.read()
        }
    }
}

extension HTTP1RequestHead {
    /// The head as NIO's type, for the exchange (shared with HTTP/2 streams).
    func nioHead() -> HTTPRequestHead {
        HTTPRequestHead(version: minorVersion == 0 ? .http1_0 : .http1_1,
                        method: HTTPMethod(rawValue: String(decoding: method, as: UTF8.self)),
                        uri: String(decoding: target, as: UTF8.self), headers: HTTP1Field.nioHeaders(bytes, fields))
    }
}

extension HTTP1Trailers {
    func nioHeaders() -> HTTPHeaders { HTTP1Field.nioHeaders(bytes, fields) }
}
