import NIOCore

/// Opaque TCP: whatever one channel reads the other writes. A half-close travels across
/// (FIN for FIN), and a side stops reading while the other cannot take more, so memory
/// stays bounded by the socket buffers whatever the peers do. Used in pairs, on one event
/// loop; a pair that carries no byte either way for `idleTimeout` is closed (Envoy's
/// tcp_proxy idle_timeout).
final class SpliceHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: SpliceHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes this side read (telemetry).
    private(set) var bytesRead = 0
    /// Called once when this side's channel closes.
    var onClose: ((SpliceHandler) -> Void)?
    /// Shared by the pair: when either side last read.
    private let activity: Activity
    /// The side that watches for idleness (one of the pair), and after how long.
    private let idleTimeout: TimeAmount?
    private var idleCheck: Scheduled<Void>?

    final class Activity {
        var last = NIODeadline.now()
    }

    private init(activity: Activity, idleTimeout: TimeAmount?) {
        self.activity = activity
        self.idleTimeout = idleTimeout
    }

    /// Two handlers wired to each other: add one to each channel.
    static func pair(idleTimeout: TimeAmount? = nil) -> (SpliceHandler, SpliceHandler) {
        let activity = Activity()
        let a = SpliceHandler(activity: activity, idleTimeout: idleTimeout), b = SpliceHandler(activity: activity, idleTimeout: nil)
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let idleTimeout {
            activity.last = context.eventLoop.now
            checkIdle(context, in: idleTimeout)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        self.context = nil
        partner = nil
    }

    private func checkIdle(_ context: ChannelHandlerContext, in delay: TimeAmount) {
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            guard let self, let idleTimeout = self.idleTimeout, let context = self.context else { return }
            let idle = context.eventLoop.now - self.activity.last
            if idle >= idleTimeout {
                context.close(promise: nil) // its partner follows (channelInactive)
            } else {
                self.checkIdle(context, in: idleTimeout - idle)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buf = unwrapInboundIn(data)
        activity.last = context.eventLoop.now
        bytesRead += buf.readableBytes
        partner?.context?.write(wrapOutboundOut(buf), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        onClose?(self)
        onClose = nil
        partner?.context?.close(promise: nil)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            partner?.context?.close(mode: .output, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }

    private func resumeReading() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }
}
