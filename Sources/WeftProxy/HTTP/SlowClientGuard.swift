import NIOCore

/// Told by the HTTP/1 proxy handler when a request's head has arrived and when its
/// exchange is over (a direct call: the handler holds the guard of its connection).
enum RequestProgress {
    case headReceived
    case exchangeDone
}

/// Bounds how long an HTTP/1 client may take: the request line and headers must be in
/// within `headerTimeout` of their first byte (slowloris: 408 and close), and a
/// keep-alive connection with nothing in flight closes after `idleTimeout`.
final class SlowClientGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum State { case idle, readingHead, inExchange }

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private let onHeaderTimeout: () -> Void
    private var state = State.idle
    private var timer: DeadlineTimer?
    private var context: ChannelHandlerContext?

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, onHeaderTimeout: @escaping () -> Void) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.onHeaderTimeout = onHeaderTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        timer = DeadlineTimer(on: context.eventLoop) { [weak self] in self?.expired() }
        timer?.set(in: idleTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Gone with the handler: a progress call after removal (the exchange that
        // switched to WebSocket bytes finishes later) then schedules nothing.
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if state == .idle {
            state = .readingHead
            timer?.set(in: headerTimeout)
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    /// Where the connection's current request is. (Called, not sent down the pipeline
    /// as a user event: that cost a pipeline walk and a dynamic cast twice per request.)
    func progress(_ p: RequestProgress) {
        switch p {
        case .headReceived:
            state = .inExchange
            timer?.set(nil)
        case .exchangeDone:
            state = .idle
            timer?.set(in: idleTimeout)
        }
    }

    private func expired() {
        guard let context else { return }
        if state == .readingHead {
            // Straight onto the socket: the HTTP encoder behind us has no response to
            // frame, since no request was ever decoded.
            onHeaderTimeout()
            let reply = "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            context.writeAndFlush(NIOAny(ByteBuffer(string: reply))).whenComplete { _ in context.close(promise: nil) }
        } else if state == .idle {
            context.close(promise: nil)
        }
    }
}
