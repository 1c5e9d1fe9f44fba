import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import WeftConfig

/// The client side of an HTTP/1.1 connection: one exchange per request (HTTP1ServerCodec
/// in front serialises pipelined requests). Reads are withheld while an exchange cannot
/// take more of the request body. (An HTTP/2 client's streams are HTTP2ServerStreams.)
final class HTTP1ProxyHandler: ChannelDuplexHandler, RemovableChannelHandler, ExchangeClient {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let conn: ConnectionContext
    var http2: Bool { false }
    private(set) var context: ChannelHandlerContext?
    private var exchange: ProxyExchange?
    private var readsPaused = false
    private var pendingRead = false
    /// A response to the current request has begun (or been sent).
    private var answered = false
    /// The connection's codec, which gives each request head as received as well (nil
    /// only where a test drives the handler with NIO's parts).
    var serverCodec: HTTP1ServerCodec?

    init(conn: ConnectionContext) {
        self.conn = conn
    }

    var eventLoop: EventLoop? { context?.eventLoop }
    var isWritable: Bool { context?.channel.isWritable ?? true }
    var forwardsHTTP1Heads: Bool { serverCodec != nil }
    var forwardsHTTP2Blocks: Bool { false }

    func writeForwarded(_ block: HPACKHeaders, _ rewrite: HeadRewrite) {
        preconditionFailure("an HTTP/1.1 connection is written HTTP/1 heads")
    }

    /// The HTTP/1 connection's header and idle timeouts, told where each request is (nil
    /// on an HTTP/2 stream).
    var slowClientGuard: SlowClientGuard?
    /// The current exchange's stream idle and request deadlines: one timer each for the
    /// connection (or HTTP/2 stream), which every exchange on it reuses, made when a
    /// deadline is first set (no request timer at all with --request-timeout 0).
    private var streamIdleTimer: DeadlineTimer?
    private var requestTimer: DeadlineTimer?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// The current exchange's stream idle deadline (nil: none).
    func setStreamIdleDeadline(_ d: NIODeadline?) {
        if streamIdleTimer == nil, d != nil, let loop = context?.eventLoop {
            streamIdleTimer = DeadlineTimer(on: loop) { [weak self] in self?.exchange?.streamIdleExpired() }
        }
        streamIdleTimer?.set(d)
    }

    /// The current exchange's request deadline (nil: none).
    func setRequestDeadline(_ d: NIODeadline?) {
        if requestTimer == nil, d != nil, let loop = context?.eventLoop {
            requestTimer = DeadlineTimer(on: loop) { [weak self] in self?.exchange?.requestExpired() }
        }
        requestTimer?.set(d)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        streamIdleTimer?.cancel()
        requestTimer?.cancel()
        serverCodec?.receiver = nil
        self.context = nil
    }

    /// An HTTP/1.1 request has a body when its head announces one (RFC 9112 §6.3).
    static func declaresBody(_ head: HTTPRequestHead) -> Bool {
        !head.headers["transfer-encoding"].isEmpty || head.headers["content-length"].contains { $0 != "0" }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received(unwrapInboundIn(data))
    }

    /// A request part from the codec.
    func received(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            answered = false
            slowClientGuard?.progress(.headReceived)
            // Heads come from weft's parser, which has refused every framing but
            // Content-Length and chunked, a lower-case method and a non-ASCII target.
            let received = serverCodec?.takeReceivedHead()
            let hasBody: Bool
            if let received {
                hasBody = received.framing != .none && received.framing != .length(0)
            } else {
                hasBody = Self.declaresBody(head)
            }
            let ex = ProxyExchange(client: self, head: head, received: received, hasBody: hasBody)
            exchange = ex
            ex.start()
        case .body(let b):
            exchange?.requestBody(b)
        case .end:
            exchange?.requestEnd()
            retire()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        exchange?.clientGone()
        exchange = nil
        context.fireChannelInactive()
    }

    /// A request the parser refused (smuggling attempts, bad syntax, over the limits)
    /// gets 400, or 431 for too much header, and the connection is closed (Envoy's DPE).
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let parse = error as? HTTP1RequestParser.Failure else {
            context.close(promise: nil)
            return
        }
        reject(context, parse.status)
    }

    /// Answers a malformed request (unless it already got an answer) and closes.
    private func reject(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus) {
        // Only a request that got no answer yet gets one: a second response for the same
        // request would be a protocol violation of our own.
        exchange?.clientGone()
        exchange = nil
        if !answered {
            answered = true
            let headers = HTTPHeaders([("connection", "close"), ("content-length", "0")])
            write(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
            write(.end(nil), flush: true)
            conn.loop.observe(.request(.refused(conn.peers(destination: nil), protocolName: "HTTP/1.1", status: Int(status.code))))
        }
        // Close our side only, so the answer is read before the connection goes: closing
        // outright with the client's bytes unread makes the kernel send RST, which can
        // overtake the 400. Envoy's delayed close does the same; after 1 s it is forced.
        context.close(mode: .output, promise: nil)
        let channel = context.channel
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.clientWritable(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readsPaused { pendingRead = true } else { context.read() }
    }

    /// Stops or resumes reading from the client (request-body backpressure).
    func pauseReads(_ p: Bool) {
        readsPaused = p
        if !p, pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    /// Called by an exchange whose response is complete.
    func exchangeFinished(_ ex: ProxyExchange) {
        pauseReads(false)
        retire()
    }

    /// Forgets the exchange once both its request and its response are over.
    private func retire() {
        if let ex = exchange, ex.finished, ex.requestComplete {
            exchange = nil
            answered = false // the next bytes are the next request's
            slowClientGuard?.progress(.exchangeDone)
        }
    }

    func write(_ part: HTTPServerResponsePart, flush: Bool) {
        guard let context else { return }
        if case .head = part { answered = true }
        if let serverCodec {
            // An HTTP/1 connection's codec is weft's HTTP1ServerCodec, which takes its own parts.
            serverCodec.send(HTTP1ServerCodec.Part(part))
        } else {
            context.write(wrapOutboundOut(part), promise: nil)
        }
        if flush { context.flush() }
    }

    /// Sends the client a response head an upstream HTTP/1 connection received, with the
    /// proxy's edits, as bytes (HTTP/1 clients only: see serverCodec).
    func writeForwarded(_ received: HTTP1ResponseHead, _ rewrite: HeadRewrite, status: HTTPResponseStatus, minorVersion: Int) {
        guard context != nil else { return }
        guard let serverCodec else { preconditionFailure("an HTTP/2 stream is written NIO heads") }
        answered = true
        serverCodec.send(.forwarded(received, rewrite, status: status, minorVersion: minorVersion))
    }

    func flush() { context?.flush() }

    func closeClient() { context?.close(promise: nil) }

    /// The response is whole and the connection does not persist: it closes once what was
    /// written has gone to the socket. A close at once fails NIO's pending writes, and
    /// cut the end off a large response to a client reading slowly.
    func closeAfterResponse() {
        guard let context else { return }
        if let codec = serverCodec, let codecContext = try? context.pipeline.syncOperations.context(handler: codec) {
            codec.closeAfterWrites(codecContext)
        } else {
            context.close(promise: nil)
        }
    }
}

/// Turns a client connection and its upstream connection whose WebSocket handshake just
/// succeeded into one opaque byte stream: splice handlers go in, the HTTP handlers come
/// out (the codecs last). The upstream's codec hands on the bytes it read past the 101 (a
/// server may send its first frames with it); a client must wait for the 101 before
/// sending any (RFC 6455 §4.1), so what its codec held is dropped.
enum WebSocketSplice {
    static func switchToBytes(client: HTTP1ProxyHandler, upstream: UpstreamHTTP1Handler, idleTimeout: TimeAmount) {
        guard let clientChannel = client.context?.channel, let upChannel = upstream.context?.channel else {
            client.closeClient()
            upstream.close()
            return
        }
        // The connection leaves the pool for good: its slot is given back when it closes.
        if let onClose = upstream.onClose {
            upstream.onClose = nil
            upChannel.closeFuture.assumeIsolated().whenComplete { _ in onClose(upstream) }
        }
        let (toClient, toUpstream) = SpliceHandler.pair(idleTimeout: idleTimeout)
        do {
            let up = upChannel.pipeline.syncOperations, cl = clientChannel.pipeline.syncOperations
            try up.addHandler(toUpstream)
            try cl.addHandler(toClient)
            // The client's HTTP handlers first: the upstream codec hands on the bytes it holds
            // as it leaves, and they must meet nothing of HTTP on the client's side.
            try remove(from: cl, [HTTP1ProxyHandler.self, SlowClientGuard.self, HTTP1ServerCodec.self])
            try remove(from: up, [UpstreamHTTP1Handler.self, HTTP1ClientCodec.self])
        } catch {
            clientChannel.close(promise: nil)
            upChannel.close(promise: nil)
            return
        }
        // A read either side's HTTP handlers held back would never come otherwise.
        clientChannel.read()
        upChannel.read()
        // The upstream codec hands on the bytes it held as it leaves, with no read-complete
        // after them, so nothing would flush them: flush then.
        clientChannel.eventLoop.assumeIsolated().execute {
            clientChannel.flush()
            upChannel.flush()
        }
    }

    private static func remove(from pipeline: ChannelPipeline.SynchronousOperations, _ types: [ChannelHandler.Type]) throws {
        for type in types {
            guard let ctx = try? pipeline.context(handlerType: type) else { continue }
            pipeline.removeHandler(context: ctx, promise: nil)
        }
    }
}

