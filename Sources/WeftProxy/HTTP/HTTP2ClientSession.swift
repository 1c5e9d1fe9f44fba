import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import WeftConfig

/// One upstream HTTP/2 connection, after NIO's HTTP/2 handler in frame mode: the pool
/// opens exchanges' requests on it as streams (HTTP2UpstreamStream) — no channel per
/// stream, no HTTP/1 translation codec, no future per request once the connection is up.
final class HTTP2ClientSession: ChannelInboundHandler, BatchFlushed {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    let endpoint: SocketKey
    /// The endpoint as telemetry writes it, formatted once per connection.
    private(set) lazy var endpointText = endpoint.description
    private var streams: [HTTP2StreamID: HTTP2UpstreamStream] = [:]
    private var nextID: Int32 = 1
    private(set) var context: ChannelHandlerContext?
    private var credit = HTTP2ConnectionCredit()
    /// Streams that were given something in the current read burst.
    private var touched: [HTTP2UpstreamStream] = []
    var flushing: FlushMembership
    private(set) var channelWritable = true
    /// NIO's handler has sent the preface (it does when the channel is or becomes
    /// active): streams may be opened. Succeeded then.
    let ready: EventLoopPromise<Void>
    private(set) var isReady = false
    /// The connection takes no new streams: the server sent GOAWAY, the connection is
    /// closing idle, or it closed. The pool is told once (`onRetire`).
    private(set) var retired = false
    var onRetire: (() -> Void)?
    /// The last stream the server said it processed, once it sent GOAWAY.
    private(set) var goAwayLastStreamID: HTTP2StreamID?

    /// Told of streams opening and closing (the idle close of the connection).
    var counter: StreamCounter?

    init(endpoint: SocketKey, loop: EventLoop, flushes: FlushBatch) {
        self.endpoint = endpoint
        flushing = FlushMembership(batch: flushes)
        ready = loop.makePromise()
    }

    /// What an upstream HTTP/2 connection's pipeline holds, front to back: NIO's handler
    /// in frame mode, the session, the counter that closes it idle, and CloseOnError (a
    /// connection error fails its streams, 502, instead of leaving them waiting). Header
    /// blocks are checked by the session and HTTP2Heads, not by NIO (NIO cannot be told
    /// one direction only); content lengths NIO still checks.
    /// `tunnel`: a requests connection of the mTLS tunnel, with its windows and limits.
    static func handlers(_ session: HTTP2ClientSession, counter: StreamCounter, tunnel: Bool = false,
                         closed: @escaping (Error) -> Void = { _ in }) -> [ChannelHandler] {
        session.counter = counter
        var config = tunnel ? TunnelHTTP2.connection(server: false) : NIOHTTP2Handler.ConnectionConfiguration()
        config.headerBlockValidation = .disabled
        config.maximumRecentlyResetStreams = CloseOnError.rememberedResets
        let closeOnError = CloseOnError(closed)
        return [NIOHTTP2Handler(mode: .client, frameDelegate: closeOnError, connectionConfiguration: config,
                                streamConfiguration: tunnel ? TunnelHTTP2.stream : .init()),
                session, counter, closeOnError]
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        channelWritable = context.channel.isWritable
    }

    /// The pipeline is complete on an active channel: streams may be opened. (Not on
    /// handlerAdded: the first stream opens at once, and the handlers after this one —
    /// the stream counter — must see its events.)
    func start() {
        if context?.channel.isActive == true { becameReady() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        readBurstEnds()
        closeAll()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        becameReady()
        context.fireChannelActive()
    }

    private func becameReady() {
        guard !isReady else { return }
        isReady = true
        ready.succeed()
    }

    /// A stream for one request; it is opened on the wire with its head.
    func makeStream() -> HTTP2UpstreamStream? {
        guard isReady, !retired, let context, context.channel.isActive else { return nil }
        return HTTP2UpstreamStream(session: self)
    }

    /// Gives `stream` the next stream id (ids go out in the order they are given: a
    /// stream's HEADERS are written right after).
    func open(_ stream: HTTP2UpstreamStream) -> HTTP2StreamID? {
        guard !retired, context != nil else { return nil }
        let id = HTTP2StreamID(nextID)
        // The id space is 2^31: a connection that used it up is replaced.
        if nextID >= Int32.max - 2 { retire() } else { nextID += 2 }
        streams[id] = stream
        counter?.opened(id)
        return id
    }

    /// The stream is gone from the session (closed, reset by us, or never opened).
    @discardableResult
    func forget(_ id: HTTP2StreamID) -> HTTP2UpstreamStream? {
        guard let s = streams.removeValue(forKey: id) else { return nil }
        counter?.closed()
        return s
    }

    func retire() {
        guard !retired else { return }
        retired = true
        onRetire?()
        onRetire = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        readBurstStarts()
        let frame = unwrapInboundIn(data)
        let id = frame.streamID
        switch frame.payload {
        case .headers(let h):
            guard let s = streams[id] else { return }
            touch(s)
            s.receivedHeaders(h)
        case .data(let d):
            // The stream first: a frame written on this connection makes NIO deliver the
            // events it holds (a StreamClosedEvent for this very DATA frame's END_STREAM),
            // and the stream must have seen its end by then.
            let n = HTTP2StreamFlow.length(d)
            if let s = streams[id] {
                touch(s)
                s.receivedData(d, length: n)
            }
            let back = credit.received(n)
            if back > 0 { write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: back)), promise: nil) }
        case .rstStream(let code):
            streams[id]?.receivedReset(code)
        case .goAway(let last, _, _):
            // After a GOAWAY the connection finishes its streams but takes no new ones: the
            // next request opens another connection. Streams above `last` were not
            // processed (RFC 9113 §6.8): refused, so safe to retry.
            goAwayLastStreamID = last
            for (sid, s) in streams where sid > last { s.markRefused() }
            retire()
        default:
            break
        }
    }

    private func touch(_ s: HTTP2UpstreamStream) {
        if !s.touched {
            s.touched = true
            touched.append(s)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !touched.isEmpty {
            let burst = touched
            touched.removeAll(keepingCapacity: true)
            for s in burst {
                s.touched = false
                s.readComplete()
            }
        }
        flush() // window updates
        readBurstEnds()
        context.fireChannelReadComplete()
    }

    /// NIO's stream events end here (see HTTP2ServerSession.userInboundEventTriggered).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        let type = Swift.type(of: event)
        if type == StreamClosedEvent.self {
            let closed = event as! StreamClosedEvent
            forget(closed.streamID)?.closed(reason: closed.reason)
        } else if type != NIOHTTP2WindowUpdatedEvent.self && type != NIOHTTP2StreamCreatedEvent.self {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        channelWritable = context.channel.isWritable
        for s in streams.values { s.writabilityChanged() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        readBurstEnds()
        retire()
        closeAll()
        ready.fail(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // One stream's error: NIO reset it (its StreamClosedEvent follows), or — for a
        // stream it could not open (after a GOAWAY) — there is no stream to close, so it
        // is failed here. Anything else is the connection's: CloseOnError, next, decides.
        if let e = error as? NIOHTTP2Errors.StreamError, let s = streams[e.streamID] {
            s.failed(e.baseError)
        }
        context.fireErrorCaught(error)
    }

    private func closeAll() {
        let all = streams.values
        streams = [:]
        for s in all { s.closed(reason: .cancel) }
    }

    func write(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>?) {
        context?.write(wrapOutboundOut(frame), promise: promise)
    }

}

/// One request on an upstream HTTP/2 connection: the exchange's upstream end. The request
/// goes out as frames (a head with no body as one HEADERS frame with END_STREAM); the
/// response comes back as NIO's HTTP/1-shaped parts, which is what the exchange reads.
final class HTTP2UpstreamStream: ExchangeUpstream {
    let session: HTTP2ClientSession
    private(set) var id: HTTP2StreamID?
    var delegate: ExchangeUpstreamDelegate?
    var requests = 0
    var isStream: Bool { true }
    private(set) var refused = false
    /// In the session's list of streams given something in this read burst.
    var touched = false
    private var flow = HTTP2StreamFlow()
    private var pendingHead: HPACKHeaders?
    private var pendingData: ByteBuffer?
    private var sentEnd = false
    private var sawHead = false
    private var receivedEnd = false
    private var isClosed = false
    /// On a tunnel requests connection: the target and source fields each head carries.
    var tunnelFields: (target: String, source: String)?

    init(session: HTTP2ClientSession) {
        self.session = session
    }

    /// Through the tunnel, the workload's endpoint (the connection goes to its node).
    var endpointText: String { tunnelFields?.target ?? session.endpointText }
    var isWritable: Bool { session.channelWritable && flow.writable }

    // MARK: ExchangeUpstream: the request, as frames

    func send(_ part: HTTPClientRequestPart, flush: Bool) {
        guard !isClosed, !sentEnd else { return }
        switch part {
        case .head(let h):
            guard var block = HTTP2Heads.request(h) else {
                failed(InvalidHead(description: "a request field to \(session.endpointText) cannot be sent over HTTP/2"))
                return
            }
            addTunnelFields(&block)
            pendingHead = block
        case .body(let body):
            guard case .byteBuffer(let b) = body, b.readableBytes > 0 else { break }
            writePending(dataToo: true)
            pendingData = b
        case .end(let trailers):
            sentEnd = true
            if let trailers, !trailers.isEmpty {
                writePending(dataToo: true)
                write(.headers(.init(headers: HTTP2Heads.trailers(trailers), endStream: true)))
            } else if let data = pendingData {
                writePending(dataToo: false)
                pendingData = nil
                write(.data(.init(data: .byteBuffer(data), endStream: true)))
            } else if let head = pendingHead {
                pendingHead = nil
                write(.headers(.init(headers: head, endStream: true)))
            } else {
                write(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))
            }
        }
        if flush { self.flush() }
    }

    func sendForwarded(_ received: HTTP1RequestHead, _ rewrite: HeadRewrite, method: HTTPMethod) {
        preconditionFailure("an HTTP/2 stream is sent header blocks or NIO heads")
    }

    func sendForwarded(_ block: HPACKHeaders, _ rewrite: HeadRewrite, method: HTTPMethod) {
        guard !isClosed, !sentEnd else { return }
        guard var out = HTTP2Heads.forwardedRequest(block, rewrite, method: method.rawValue) else {
            failed(InvalidHead(description: "a request field to \(session.endpointText) cannot be sent over HTTP/2"))
            return
        }
        addTunnelFields(&out)
        pendingHead = out
    }

    /// The fields only the proxy writes (every exchange's rewrite drops a client's own).
    private func addTunnelFields(_ block: inout HPACKHeaders) {
        guard let (target, source) = tunnelFields else { return }
        block.add(name: TunnelHTTP2.targetField, value: target)
        block.add(name: TunnelHTTP2.sourceField, value: source)
    }

    private func writePending(dataToo: Bool) {
        if let head = pendingHead {
            pendingHead = nil
            write(.headers(.init(headers: head)))
        }
        guard dataToo, let data = pendingData else { return }
        pendingData = nil
        let n = data.readableBytes
        if flow.wrote(n) { delegate?.upstreamWritabilityChanged(self, writable: false) }
        let sent = session.context?.eventLoop.makePromise(of: Void.self)
        sent?.futureResult.assumeIsolated().whenComplete { [self] _ in
            if flow.sent(n) { delegate?.upstreamWritabilityChanged(self, writable: isWritable) }
        }
        write(.data(.init(data: .byteBuffer(data))), promise: sent)
    }

    /// Writes a frame of this stream, opening it with its first.
    private func write(_ payload: HTTP2Frame.FramePayload, promise: EventLoopPromise<Void>? = nil) {
        if id == nil {
            guard let opened = session.open(self) else {
                // The connection went away before the stream could open: not processed.
                promise?.fail(ChannelError.ioOnClosedChannel)
                failed(NIOHTTP2Errors.createdStreamAfterGoaway())
                return
            }
            id = opened
        }
        session.write(HTTP2Frame(streamID: id!, payload: payload), promise: promise)
    }

    func flush() {
        if !isClosed { writePending(dataToo: true) }
        session.flush()
    }

    func setPaused(_ p: Bool) {
        giveBack(flow.setPaused(p))
    }

    /// The exchange is done with it. A stream closes by itself once both END_STREAMs are
    /// through (NIO tells the session); one the exchange leaves open is reset.
    func close() {
        delegate = nil
        guard !isClosed else { return }
        isClosed = true
        if let id {
            session.write(HTTP2Frame(streamID: id, payload: .rstStream(.cancel)), promise: nil)
            session.forget(id)
            session.flush()
        }
    }

    /// Resets the stream for the upstream's fault; the exchange hears it closed.
    private func reset(_ code: HTTP2ErrorCode) {
        guard !isClosed, let id else { return }
        isClosed = true
        session.write(HTTP2Frame(streamID: id, payload: .rstStream(code)), promise: nil)
        session.forget(id)
        session.flush()
        let d = delegate
        delegate = nil
        d?.upstreamClosed(self)
    }

    var connection: UpstreamHTTP1Handler? { nil }

    /// Back from an exchange that completed: nothing to do unless it is still open.
    func released() {
        delegate = nil
        if !(sentEnd && receivedEnd) { close() }
    }

    // MARK: the response, from frames

    /// A head this end could not send, or one the upstream sent that no HTTP/2 peer may.
    struct InvalidHead: Error, CustomStringConvertible {
        let description: String
    }

    func receivedHeaders(_ h: HTTP2Frame.FramePayload.Headers) {
        guard HTTP2Heads.isValidResponse(h.headers, trailers: sawHead) else {
            // Malformed (RFC 9113 §8.1.1): the stream is reset, and the exchange told it
            // ended without a response it could use.
            reset(.protocolError)
            return
        }
        if !sawHead {
            guard let status = h.headers.first(name: ":status").flatMap({ Int($0) }) else { return }
            // Informational heads (100 Continue, 103) are not passed on.
            if status < 200 { return }
            sawHead = true
            if h.endStream { receivedEnd = true }
            delegate?.upstreamRead(.block(h.headers, status: status), from: self)
            if h.endStream { ended(nil) }
        } else {
            ended(HTTP2Heads.regular(h.headers))
        }
    }

    func receivedData(_ d: HTTP2Frame.FramePayload.Data, length: Int) {
        // Ended before anything is written (see HTTP2ClientSession.channelRead); the last
        // frame of a stream needs no window given back.
        if d.endStream { receivedEnd = true }
        if case .byteBuffer(let b) = d.data, b.readableBytes > 0 { delegate?.upstreamRead(.body(b), from: self) }
        if d.endStream {
            ended(nil)
        } else {
            giveBack(flow.received(length))
        }
    }

    private func ended(_ trailers: HTTPHeaders?) {
        receivedEnd = true
        delegate?.upstreamRead(.end(trailers), from: self)
    }

    func receivedReset(_ code: HTTP2ErrorCode) {
        if code == .refusedStream { refused = true }
    }

    func markRefused() { refused = true }

    func readComplete() {
        delegate?.upstreamReadComplete(from: self)
    }

    func writabilityChanged() {
        delegate?.upstreamWritabilityChanged(self, writable: isWritable)
    }

    /// NIO closed the stream (both ends done, a reset, the connection gone).
    func closed(reason: HTTP2ErrorCode?) {
        guard !isClosed else { return }
        isClosed = true
        if receivedEnd && reason == nil { return }
        if reason == .refusedStream { refused = true }
        if let last = session.goAwayLastStreamID, let id, id > last { refused = true }
        let d = delegate
        delegate = nil
        d?.upstreamClosed(self)
    }

    /// NIO refused a frame of this stream. Reported on the next tick: this runs inside
    /// the exchange's own write.
    func failed(_ error: Error) {
        if error is NIOHTTP2Errors.CreatedStreamAfterGoaway { refused = true }
        if let closed = error as? NIOHTTP2Errors.StreamClosed, closed.errorCode == .refusedStream { refused = true }
        guard !isClosed else { return }
        isClosed = true
        if let id { session.forget(id) }
        guard let loop = session.context?.eventLoop else { return }
        loop.assumeIsolated().execute { [self] in
            let d = delegate
            delegate = nil
            d?.upstreamClosed(self)
        }
    }

    private func giveBack(_ n: Int) {
        guard n > 0, let id, !isClosed else { return }
        session.write(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: n)), promise: nil)
        session.flush() // at the end of the read burst, when in one
    }
}
