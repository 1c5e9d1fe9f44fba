import NIOCore

/// Opaque TCP: whatever one channel reads the other writes. A half-close travels across
/// (FIN for FIN), and a side stops reading while the other cannot take more, so memory
/// stays bounded by the socket buffers whatever the peers do. Used in pairs.
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

    /// Two handlers wired to each other: add one to each channel.
    static func pair() -> (SpliceHandler, SpliceHandler) {
        let a = SpliceHandler(), b = SpliceHandler()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buf = unwrapInboundIn(data)
        bytesRead += buf.readableBytes
        partner?.context?.write(wrapOutboundOut(buf), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
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
