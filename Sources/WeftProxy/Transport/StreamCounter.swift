import NIOCore
import NIOHTTP2

/// Counts the open streams of an HTTP/2 connection, so a retired tunnel connection can
/// close once its last stream is done; and closes the connection once it has had no
/// stream for `idleTimeout` (Envoy's idle_timeout). The close is announced with GOAWAY
/// naming the last stream the peer opened, so the peer knows that a stream it opens
/// meanwhile was not processed and may be retried (RFC 9113 §6.8).
///
/// Sits after the connection's NIOHTTP2Handler, which must be given `delegate` when it
/// multiplexes streams into channels: NIO reports stream creation and closure to that
/// delegate only, not down the pipeline. Behind a handler in frame mode the proxy's
/// HTTP/2 session tells it (`opened`, `closed`), as it learns of its streams anyway —
/// picking NIO's user events out of the pipeline took two dynamic casts per event.
///
/// A serving connection given a loop (`drains`) is also how an agent handing over ends
/// its HTTP/2 clients and tunnel peers gracefully (`drain`).
final class StreamCounter: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    private(set) var open = 0
    private let idleTimeout: TimeAmount?
    /// Serving: the peer opens the streams (a client of the proxy, a tunnel's source).
    private let server: Bool
    private let eventLoop: EventLoop
    private var lastPeerStream = HTTP2StreamID.rootStream
    /// The idle close: one timer for the connection's life, its deadline moved as streams
    /// come and go (no task scheduled and cancelled per stream).
    private var timer: DeadlineTimer?
    private var context: ChannelHandlerContext?
    /// Told when the idle close begins (a pool stops handing the connection out: a TLS
    /// close waits for the peer's close_notify, and the channel is active until then).
    private let onIdleClose: (() -> Void)?
    /// The loop whose draining (a handover) ends this connection; it knows the
    /// connection while it is open.
    private let drains: LoopState?
    private var draining = false
    /// A tunnel connection the pool put no new stream on any more (a GOAWAY came, its
    /// peer's certificate nears its end, a renewal, a handover): HTTP/1 connections kept
    /// alive over its CONNECT streams are not used again either, so that it can close
    /// once their last response is done instead of being cut under one.
    var retired = false

    init(eventLoop: EventLoop, idleTimeout: TimeAmount?, server: Bool, drains: LoopState? = nil, onIdleClose: (() -> Void)? = nil) {
        self.eventLoop = eventLoop
        self.idleTimeout = idleTimeout
        self.server = server
        self.drains = drains
        self.onIdleClose = onIdleClose
    }

    /// For the NIOHTTP2Handler of the same connection (called on its event loop).
    var delegate: Delegate { Delegate(counter: NIOLoopBound(self, eventLoop: eventLoop)) }

    struct Delegate: NIOHTTP2StreamDelegate {
        let counter: NIOLoopBound<StreamCounter>
        func streamCreated(_ id: HTTP2StreamID, channel: Channel) { counter.value.opened(id) }
        func streamClosed(_ id: HTTP2StreamID, channel: Channel) { counter.value.closed() }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { becameActive() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        drains?.http2Served[ObjectIdentifier(self)] = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        becameActive()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        drains?.http2Served[ObjectIdentifier(self)] = nil
        context.fireChannelInactive()
    }

    private func becameActive() {
        armIdle()
        guard let drains else { return }
        // A connection whose protocol was decided after the handover began drains too.
        if drains.draining { drain() } else { drains.http2Served[ObjectIdentifier(self)] = self }
    }

    /// A stream opened (by the peer, when serving).
    func opened(_ id: HTTP2StreamID) {
        open += 1
        timer?.set(nil)
        if server { lastPeerStream = max(lastPeerStream, id) }
    }

    /// A stream closed.
    func closed() {
        open -= 1
        guard open == 0 else { return }
        if peerFinished { context?.close(promise: nil) } else { armIdle() }
    }

    /// The peer's FIN, on a listener that lets clients half-close (for opaque TCP): an
    /// HTTP/2 peer that has stopped sending opens no stream and acknowledges nothing
    /// more, so the connection closes once the streams it has open are answered — at once
    /// if it has none (curl and h2load end their connections so). Before, nothing here
    /// heard the FIN: every HTTP/2 client connection stayed open, in CLOSE-WAIT, until the
    /// idle timeout.
    private var peerFinished = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            peerFinished = true
            if open == 0 { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func armIdle() {
        guard let idleTimeout, open == 0, let context else { return }
        if timer == nil {
            timer = DeadlineTimer(on: context.eventLoop) { [weak self] in self?.idleExpired() }
        }
        timer?.set(in: idleTimeout)
    }

    /// How long a drained connection still takes new streams after the first GOAWAY: a
    /// round trip and more, for streams the peer opened before it heard.
    static let quiesce = TimeAmount.seconds(1)

    /// Ends the connection gracefully, as RFC 9113 §6.8 has it: a GOAWAY with the highest
    /// stream id (open no more streams here; what is on its way is still taken), after
    /// `quiesce` a GOAWAY naming the last stream the peer opened (anything later was not
    /// processed and may be retried), then the close once the streams still open are
    /// done. The peer moves to a new connection — to the agent that took over.
    func drain() {
        guard server, !draining, let context, context.channel.isActive else { return }
        draining = true
        drains?.http2Served[ObjectIdentifier(self)] = nil
        // The first GOAWAY goes out beneath NIO's handler, as bytes: once NIO has sent a
        // GOAWAY it refuses every new stream, whatever the GOAWAY's last stream id, and a
        // call the client sent before it heard was reset with REFUSED_STREAM (grpcio 1.51
        // fails such a call; the takeover test saw one in two runs). Written from NIO's
        // handler's context, outside its own writes, the frame lands between whole frames.
        if let h2 = try? context.pipeline.syncOperations.context(handlerType: NIOHTTP2Handler.self) {
            h2.writeAndFlush(NIOAny(context.channel.allocator.buffer(bytes: Self.shutdownNotice)), promise: nil)
        }
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.quiesce) { [weak self] in
            guard let self, let context = self.context, context.channel.isActive else { return }
            let last = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: self.lastPeerStream, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(NIOAny(last), promise: nil)
            self.peerFinished = true
            if self.open == 0 { context.close(promise: nil) }
        }
    }

    /// GOAWAY (type 7) on stream 0, last stream id 2^31-1, NO_ERROR: a 9-byte frame
    /// header and 8 bytes of payload.
    static let shutdownNotice: [UInt8] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]

    private func idleExpired() {
        guard open == 0, let context, context.channel.isActive else { return }
        onIdleClose?()
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: lastPeerStream, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(NIOAny(goAway), promise: nil)
        context.close(promise: nil)
    }
}
