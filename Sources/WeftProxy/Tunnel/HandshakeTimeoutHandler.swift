import NIOCore
import NIOSSL
import NIOTLS

/// Closes a TLS connection whose handshake is not done within `timeout` of its start
/// (10 s by default): a peer that connects and says nothing, or stalls mid-handshake,
/// must not hold a connection for the hour of the idle timeout. Leaves the pipeline once
/// the handshake completes.
final class HandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Any
    private let timeout: TimeAmount
    private let expired: () -> Void
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount, expired: @escaping () -> Void = {}) {
        self.timeout = timeout
        self.expired = expired
    }

    func handlerAdded(context: ChannelHandlerContext) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            guard context.channel.isActive else { return }
            self?.expired()
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { timer?.cancel() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Passed on before leaving: a context that left the pipeline passes nothing on,
        // and the handler after this one picks the protocol on this very event.
        context.fireUserInboundEventTriggered(event)
        if case TLSUserEvent.handshakeCompleted = event {
            timer?.cancel()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}
