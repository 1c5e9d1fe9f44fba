import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// One HTTP/2 client connection, after NIO's HTTP/2 handler in frame mode: every stream
/// the client opens is one exchange (HTTP2ServerStream), driven from the frames
/// themselves — no channel per stream, no HTTP/1 translation codec. NIO's handler still
/// does the protocol: framing, HPACK, header validation, stream states, the flood and
/// Rapid Reset guards; this does what a multiplexer did for the proxy's streams, flow
/// control included (HTTP2StreamFlow).
final class HTTP2ServerSession: ChannelInboundHandler, BatchFlushed {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// The connection's context: every stream's (a client of the proxy), or — on a tunnel
    /// requests connection — none, each stream naming its own to `targets`.
    let conn: ConnectionContext?
    private let targets: TunnelRequestTargets?
    /// Where the streams' refusals are counted (tunnel requests connections).
    private let refused: ((TunnelStreamRefusal) -> Void)?
    /// Told of streams opening and closing (the idle close of the connection).
    private let counter: StreamCounter
    private var streams: [HTTP2StreamID: HTTP2ServerStream] = [:]
    private(set) var context: ChannelHandlerContext?
    private var credit = HTTP2ConnectionCredit()
    var flushing: FlushMembership
    private(set) var channelWritable = true
    /// The streams' idle deadlines share one timer, due at the earliest of them: a
    /// deadline only ever moves later while its exchange sees bytes, so when the timer
    /// fires it ends the streams past theirs and waits for the earliest left (a scan of
    /// at most the connection's 100 streams, once per idle timeout, instead of a timer and
    /// a scheduled task per stream).
    private var idleTimer: DeadlineTimer?
    private var idleDue: NIODeadline?
    private var refusals = 0
    private var refusalsSince: NIODeadline?

    init(conn: ConnectionContext, counter: StreamCounter) {
        self.conn = conn
        targets = nil
        refused = nil
        self.counter = counter
        flushing = FlushMembership(batch: conn.loop.flushes)
    }

    /// A tunnel requests connection: each stream's context from its target field.
    init(targets: TunnelRequestTargets, counter: StreamCounter, refused: @escaping (TunnelStreamRefusal) -> Void) {
        conn = nil
        self.targets = targets
        self.refused = refused
        self.counter = counter
        flushing = FlushMembership(batch: targets.loop.flushes)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        channelWritable = context.channel.isWritable
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        readBurstEnds()
        endAll()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        readBurstStarts()
        let frame = unwrapInboundIn(data)
        let id = frame.streamID
        switch frame.payload {
        case .headers(let h):
            if let s = streams[id] {
                s.receivedTrailers(h)
            } else {
                // NIO does not check the blocks of the proxy's HTTP/2 connections (its
                // checks cost ~20 % of HTTP/2 throughput, `scripts/bench mtls`): a
                // malformed request is reset here as NIO would (RFC 9113 §8.1.1).
                guard HTTP2Heads.isValidRequest(h.headers) else {
                    refused?(.init(400, .badRequest, "malformed request header block"))
                    reset(id)
                    countRefusal(id)
                    break
                }
                guard let conn = conn ?? streamContext(id, h) else { break }
                let s = HTTP2ServerStream(session: self, id: id, conn: conn)
                streams[id] = s
                counter.opened(id)
                s.receivedHead(h)
            }
        case .data(let d):
            // The stream first: a frame written on this connection makes NIO deliver the
            // events it holds, this DATA frame's stream closing among them.
            let n = HTTP2StreamFlow.length(d)
            streams[id]?.receivedData(d, length: n)
            let back = credit.received(n)
            if back > 0 {
                write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: back)), promise: nil)
                flush() // at the end of this read burst: nothing else may flush it (an upload whose response already went)
            }
        default:
            // RST_STREAM ends a stream through the StreamClosedEvent NIO sends after it;
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE and PRIORITY are NIO's.
            break
        }
    }

    /// The context a tunnel request stream names, or nil when it is refused: answered with
    /// the refusal's status and ended (reset as well if the peer was still sending).
    private func streamContext(_ id: HTTP2StreamID, _ h: HTTP2Frame.FramePayload.Headers) -> ConnectionContext? {
        switch targets?.context(h.headers) {
        case .success(let conn):
            return conn
        case .failure(let refusal):
            refused?(refusal)
            countRefusal(id)
            switch refusal.kind {
            case .notLocalWorkload, .unavailable:
                // Not processed: the source may try another endpoint (a stale one, say),
                // as it would after a refused CONNECT (RFC 9113 §8.7).
                write(HTTP2Frame(streamID: id, payload: .rstStream(.refusedStream)), promise: nil)
            default:
                let status = HPACKHeaders([(":status", String(refusal.status)), ("content-length", "0")])
                write(HTTP2Frame(streamID: id, payload: .headers(.init(headers: status, endStream: true))), promise: nil)
                if !h.endStream { write(HTTP2Frame(streamID: id, payload: .rstStream(.noError)), promise: nil) }
            }
            flush()
            return nil
        case nil:
            return nil
        }
    }

    /// The session's own refusals (malformed blocks, tunnel streams it would not serve),
    /// which NIO's guards do not see: counted as NIO counts its stream errors, and past
    /// 200 in 30 s the connection ends with GOAWAY ENHANCE_YOUR_CALM, as NIO ends one.
    private func countRefusal(_ id: HTTP2StreamID) {
        let now = NIODeadline.now()
        if let since = refusalsSince, now - since < .seconds(30) {
            refusals += 1
        } else {
            refusalsSince = now
            refusals = 1
        }
        guard refusals > Self.maxRefusals, let context else { return }
        write(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: id, errorCode: .enhanceYourCalm, opaqueData: nil)), promise: nil)
        context.flush()
        context.close(promise: nil)
    }

    static let maxRefusals = 200

    /// Resets a stream the peer got wrong (PROTOCOL_ERROR).
    func reset(_ id: HTTP2StreamID) {
        write(HTTP2Frame(streamID: id, payload: .rstStream(.protocolError)), promise: nil)
        flush()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readBurstEnds()
        context.fireChannelReadComplete()
    }

    /// NIO's stream events end here: a stream closed ends its exchange end; the others
    /// (stream created, window updated: several per request) are told apart by their type
    /// alone, without a dynamic cast each.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        let type = Swift.type(of: event)
        if type == StreamClosedEvent.self {
            // Our END_STREAM (or reset) when the client's came before, a reset from the
            // client, or NIO's own after a stream error.
            if let s = streams.removeValue(forKey: (event as! StreamClosedEvent).streamID) {
                counter.closed()
                s.closed()
            }
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
        endAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // NIO has reset the stream (its StreamClosedEvent ends ours); the connection goes
        // on. Anything else is the connection's: CloseOnError, next, decides.
        context.fireErrorCaught(error)
    }

    /// A stream's idle deadline is `d` now.
    func streamIdleDeadline(_ d: NIODeadline) {
        if let due = idleDue, due <= d { return }
        guard let loop = context?.eventLoop else { return }
        if idleTimer == nil { idleTimer = DeadlineTimer(on: loop) { [weak self] in self?.idleTimerFired() } }
        idleDue = d
        idleTimer?.set(d)
    }

    private func idleTimerFired() {
        idleDue = nil
        let now = NIODeadline.now()
        var next: NIODeadline?
        for s in streams.values {
            guard let d = s.idleDeadline else { continue }
            if d <= now {
                s.idleExpired()
            } else if next == nil || d < next! {
                next = d
            }
        }
        if let next { streamIdleDeadline(next) }
    }

    private func endAll() {
        idleTimer?.cancel()
        let all = streams.values
        streams = [:]
        for s in all { s.closed() }
    }

    // MARK: for the streams

    func write(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>?) {
        context?.write(wrapOutboundOut(frame), promise: promise)
    }

}

/// One client stream: the exchange's client end. Its request arrives as frames, its
/// response leaves as frames — a head and a small body in one HEADERS and one DATA frame
/// with END_STREAM where the response allows, as HTTP/2 servers send them.
final class HTTP2ServerStream: ExchangeClient {
    /// Held strongly (an exchange may outlive the connection's handler); the session
    /// lets go of its streams when they close or it goes, which breaks the cycle.
    let session: HTTP2ServerSession
    let id: HTTP2StreamID
    let conn: ConnectionContext
    private var exchange: ProxyExchange?
    private var flow = HTTP2StreamFlow()
    /// Held until what follows it is known: a head and an end go out as one frame.
    private var pendingHead: HPACKHeaders?
    /// Held likewise: the last body part and the end go out as one frame.
    private var pendingData: ByteBuffer?
    private var answered = false
    /// END_STREAM (or a reset) has gone out from our side.
    private var ended = false
    private var closedByPeer = false
    /// When the stream goes idle (its session's timer keeps the time).
    private(set) var idleDeadline: NIODeadline?
    private var requestTimer: DeadlineTimer?

    init(session: HTTP2ServerSession, id: HTTP2StreamID, conn: ConnectionContext) {
        self.session = session
        self.id = id
        self.conn = conn
    }

    var http2: Bool { true }
    var eventLoop: EventLoop? { session.context?.eventLoop }
    var isWritable: Bool { session.channelWritable && flow.writable }
    var forwardsHTTP1Heads: Bool { false }
    var forwardsHTTP2Blocks: Bool { true }

    // MARK: the request, from frames

    func receivedHead(_ h: HTTP2Frame.FramePayload.Headers) {
        // NIO has validated the block (RFC 9113 §8.3: pseudo-fields first, each once, the
        // mandatory ones present, names in lower case, no connection-specific field).
        var method: String?, path: String?, authority: String?
        var fields: [(String, String)] = []
        // Room for the two fields that may be added (host, content-length).
        fields.reserveCapacity(h.headers.count + 2)
        var hasHost = false, hasLength = false, bad = false
        for (name, value, _) in h.headers {
            if name.utf8.first == UInt8(ascii: ":") {
                // A pseudo-field becomes part of an HTTP/1 request line or Host on the way
                // on: no control byte, space or DEL (request smuggling), and — as weft's
                // HTTP/1 parser requires of a target — nothing beyond ASCII.
                if value.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7f }) { bad = true }
                switch name {
                case ":method": method = value
                case ":path": path = value
                case ":authority": authority = value
                default: break // :scheme; :protocol is refused below (no :path with it)
                }
            } else {
                if !hasHost, name == "host" { hasHost = true }
                if !hasLength, name == "content-length" { hasLength = true }
                fields.append((name, value))
            }
        }
        // A method is case-sensitive: `delete` is not DELETE to a policy, yet lenient
        // servers serve it as one, so a lower-case one is refused. CONNECT (no :path) is
        // not proxied from a client's HTTP/2 connection.
        guard !bad, let method, let path, !method.utf8.contains(where: { $0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z") }) else {
            reject()
            return
        }
        if !hasHost, let authority { fields.append(("host", authority)) }
        let nioMethod = HTTPMethod(rawValue: method)
        if h.endStream && !hasLength {
            // As NIO's HTTP/2-to-HTTP/1 codec did: a request that can carry a body says
            // it has none, for an HTTP/1.1 upstream.
            switch nioMethod {
            case .GET, .HEAD, .DELETE, .CONNECT, .TRACE: break
            default: fields.append(("content-length", "0"))
            }
        }
        let head = HTTPRequestHead(version: .http2, method: nioMethod, uri: path, headers: HTTPHeaders(fields))
        let ex = ProxyExchange(client: self, head: head, block: h.headers, hasBody: !h.endStream)
        exchange = ex
        ex.start()
        if h.endStream { ex.requestEnd() }
    }

    func receivedData(_ d: HTTP2Frame.FramePayload.Data, length: Int) {
        if case .byteBuffer(let b) = d.data, b.readableBytes > 0 { exchange?.requestBody(b) }
        if d.endStream {
            // The last frame: no window to give back.
            exchange?.requestEnd()
        } else {
            giveBack(flow.received(length))
        }
    }

    func receivedTrailers(_ h: HTTP2Frame.FramePayload.Headers) {
        // Request trailers end the request; they are not passed on (as before: NIO's
        // codec's HTTP/1 end part carried them, and the proxy never forwarded them).
        // Malformed ones reset the stream, as NIO would have.
        guard HTTP2Heads.isValidResponse(h.headers, trailers: true) else {
            session.reset(id)
            return
        }
        exchange?.requestEnd()
    }

    /// NIO closed the stream: both ends done, reset by either side, or the connection
    /// gone. NIO reports it as it happens — for our own END_STREAM or reset, inside the
    /// exchange's call that wrote it: the exchange is ending then, and is not told the
    /// client went.
    func closed() {
        closedByPeer = true
        idleDeadline = nil
        requestTimer?.cancel()
        if !ended {
            ended = true
            exchange?.clientGone()
        }
        exchange = nil
    }

    func writabilityChanged() {
        exchange?.clientWritable(isWritable)
    }

    private func giveBack(_ n: Int) {
        guard n > 0, !closedByPeer else { return }
        session.write(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: n)), promise: nil)
        session.flush() // at the end of the read burst, when in one
    }

    /// A request refused before it became an exchange: 400, and the stream ends.
    private func reject() {
        answered = true
        write(.head(HTTPResponseHead(version: .http2, status: .badRequest, headers: ["content-length": "0"])))
        write(.end(nil), flush: true)
        conn.loop.observe(.request(.refused(conn.peers(destination: nil), protocolName: "HTTP/2", status: 400)))
        closeClient()
    }

    // MARK: ExchangeClient: the response, as frames

    func write(_ part: HTTPServerResponsePart, flush: Bool) {
        guard !ended else { return }
        switch part {
        case .head(let h) where h.status.code < 200:
            // Informational: on its own, before the final head.
            guard let block = checked(HTTP2Heads.response(h), trailers: false) else { return }
            session.write(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block))), promise: nil)
        case .head(let h):
            answered = true
            pendingHead = checked(HTTP2Heads.response(h), trailers: false)
        case .body(let body):
            guard case .byteBuffer(let b) = body, b.readableBytes > 0 else { break }
            writePending(dataToo: true)
            pendingData = b
        case .end(let trailers):
            ended = true
            if let trailers, !trailers.isEmpty {
                writePending(dataToo: true)
                guard let block = checked(HTTP2Heads.trailers(trailers), trailers: true) else { return }
                session.write(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block, endStream: true))), promise: nil)
            } else if let data = pendingData {
                writePending(dataToo: false)
                pendingData = nil
                // The last frame of the stream: nothing more comes after it, so it needs no
                // accounting (and no write promise).
                session.write(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(data), endStream: true))), promise: nil)
            } else if let head = pendingHead {
                pendingHead = nil
                session.write(HTTP2Frame(streamID: id, payload: .headers(.init(headers: head, endStream: true))), promise: nil)
            } else {
                session.write(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))), promise: nil)
            }
        }
        if flush { self.flush() }
    }

    /// Writes the held head, and the held body part when `dataToo` (counted against the
    /// stream's send window: more may follow it).
    private func writePending(dataToo: Bool) {
        if let head = pendingHead {
            pendingHead = nil
            session.write(HTTP2Frame(streamID: id, payload: .headers(.init(headers: head))), promise: nil)
        }
        guard dataToo, let data = pendingData else { return }
        pendingData = nil
        let n = data.readableBytes
        if flow.wrote(n) { exchange?.clientWritable(false) }
        let sent = session.context?.eventLoop.makePromise(of: Void.self)
        sent?.futureResult.assumeIsolated().whenComplete { [self] _ in
            if flow.sent(n) { exchange?.clientWritable(isWritable) }
        }
        session.write(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(data)))), promise: sent)
    }

    func writeForwarded(_ received: HTTP1ResponseHead, _ rewrite: HeadRewrite, status: HTTPResponseStatus, minorVersion: Int) {
        preconditionFailure("an HTTP/2 stream is written header blocks or NIO heads")
    }

    func writeForwarded(_ block: HPACKHeaders, _ rewrite: HeadRewrite) {
        guard !ended else { return }
        answered = true
        pendingHead = checked(HTTP2Heads.forwardedResponse(block, rewrite), trailers: false)
    }

    /// A block this stream may send (HTTP2Heads.isValidResponse: NIO does not check what
    /// the proxy sends either); else the stream is reset, as NIO resets a stream whose
    /// block it refuses — a route's header value with a line break, say.
    private func checked(_ block: HPACKHeaders, trailers: Bool) -> HPACKHeaders? {
        if HTTP2Heads.isValidResponse(block, trailers: trailers) { return block }
        ended = true
        pendingHead = nil
        pendingData = nil
        session.write(HTTP2Frame(streamID: id, payload: .rstStream(.internalError)), promise: nil)
        session.flush()
        // The exchange is inside this write: told on the next tick that its client is gone.
        let ex = exchange
        session.context?.eventLoop.assumeIsolated().execute { ex?.clientGone() }
        return nil
    }

    func flush() {
        if !ended { writePending(dataToo: true) }
        session.flush()
    }

    /// An HTTP/2 exchange always keeps the connection; the stream ended with its response.
    func closeAfterResponse() {}

    func closeClient() {
        guard !closedByPeer else { return }
        if !ended {
            ended = true
            pendingHead = nil
            pendingData = nil
        }
        // One stream of the connection ends (RST_STREAM CANCEL, as a stream channel's
        // close sent); the connection's other streams go on. A stream already closed
        // both ways is left alone: NIO would refuse a reset on it.
        session.write(HTTP2Frame(streamID: id, payload: .rstStream(.cancel)), promise: nil)
        session.flush()
    }

    func pauseReads(_ p: Bool) {
        giveBack(flow.setPaused(p))
    }

    func setStreamIdleDeadline(_ d: NIODeadline?) {
        idleDeadline = d
        if let d { session.streamIdleDeadline(d) }
    }

    /// The session's timer found the stream past its idle deadline.
    func idleExpired() {
        idleDeadline = nil
        exchange?.streamIdleExpired()
    }

    func setRequestDeadline(_ d: NIODeadline?) {
        if requestTimer == nil, d != nil, let loop = eventLoop {
            requestTimer = DeadlineTimer(on: loop) { [weak self] in self?.exchange?.requestExpired() }
        }
        requestTimer?.set(d)
    }

    func exchangeFinished(_ ex: ProxyExchange) {
        pauseReads(false)
        // Answered before the client finished sending (an upstream that answered early, a
        // local reply): the client is told to stop, as RFC 9113 §8.1 has a server do —
        // RST_STREAM NO_ERROR after the response. Without it a client goes on uploading
        // into a stream nobody reads (curl waited for ever once its window ran out).
        if !ex.requestComplete && ended && !closedByPeer {
            // The response's last frames out of NIO's buffers first: a reset drops what
            // of its stream is still buffered there.
            session.flushNow()
            guard !closedByPeer else { return }
            session.write(HTTP2Frame(streamID: id, payload: .rstStream(.noError)), promise: nil)
            session.flush()
        }
    }
}
