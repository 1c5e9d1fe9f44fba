import NIOCore

/// Told by the HTTP/1 proxy handler when a request's head has arrived and when its
/// exchange is over (outbound user events travel to this guard at the pipeline's front).
enum RequestProgress {
    case headReceived
    case exchangeDone
}

/// Bounds how long an HTTP/1 client may take: the request line and headers must be in
/// within `headerTimeout` of their first byte (slowloris: 408 and close), and a
/// keep-alive connection with nothing in flight closes after `idleTimeout`.
final class SlowClientGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    enum State { case idle, readingHead, inExchange }

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private let onHeaderTimeout: () -> Void
    private var state = State.idle
    private var timer: Scheduled<Void>?

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, onHeaderTimeout: @escaping () -> Void) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.onHeaderTimeout = onHeaderTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(context, idleTimeout) }
    func handlerRemoved(context: ChannelHandlerContext) { timer?.cancel() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if state == .idle {
            state = .readingHead
            arm(context, headerTimeout)
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let p = event as? RequestProgress else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        switch p {
        case .headReceived:
            state = .inExchange
            timer?.cancel()
        case .exchangeDone:
            state = .idle
            arm(context, idleTimeout)
        }
        promise?.succeed()
    }

    private func arm(_ context: ChannelHandlerContext, _ after: TimeAmount) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: after) { [weak self] in
            guard let self else { return }
            if self.state == .readingHead {
                // Straight onto the socket: the HTTP encoder behind us has no response
                // to frame, since no request was ever decoded.
                self.onHeaderTimeout()
                let reply = "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                context.writeAndFlush(NIOAny(ByteBuffer(string: reply))).whenComplete { _ in context.close(promise: nil) }
            } else if self.state == .idle {
                context.close(promise: nil)
            }
        }
    }
}
