import NIOCore
import NIOPosix

/// Opaque TCP through the proxy: connects to the chosen endpoint, holds what the client
/// sends meanwhile (and stops reading), then splices the two connections and leaves.
final class TCPProxyHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private let idleTimeout: TimeAmount
    private let connect: (EventLoop) -> EventLoopFuture<Channel>
    private let connected: (Channel?) -> Void
    private let spliced: (SpliceHandler, SpliceHandler) -> Void
    private var held: [ByteBuffer] = []
    private var inputClosed = false
    private var upstream: Channel?

    /// `connect` opens the upstream connection; `connected` is told the outcome (nil:
    /// failed, the client is closed); `spliced` gets the handler pair (client, upstream).
    init(idleTimeout: TimeAmount, connect: @escaping (EventLoop) -> EventLoopFuture<Channel>, connected: @escaping (Channel?) -> Void,
         spliced: @escaping (SpliceHandler, SpliceHandler) -> Void) {
        self.idleTimeout = idleTimeout
        self.connect = connect
        self.connected = connected
        self.spliced = spliced
    }

    // Connecting starts once the client's channel is active: a loopback connect can
    // complete at once, and attaching to a channel not yet active would lose it.
    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private var started = false

    private func start(_ context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        connect(context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let ch): self.attach(context, ch)
            case .failure:
                self.connected(nil)
                Self.reset(context)
            }
        }
    }

    /// Closes the client's connection with a reset: a clean FIN would read as an empty
    /// answer (or not, depending on whether the client's first bytes had arrived, which
    /// makes the kernel reset anyway), where the connection failed — as if refused.
    static func reset(_ context: ChannelHandlerContext) {
        guard let socket = context.channel as? SocketOptionProvider else {
            context.close(promise: nil) // a tunnel stream: its close resets the stream
            return
        }
        socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        held.append(unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed { inputClosed = true; return }
        context.fireUserInboundEventTriggered(event)
    }

    func read(context: ChannelHandlerContext) {
        // Nothing more is read until the upstream exists: the client waits in its own
        // socket buffer, not in ours.
    }

    private func attach(_ context: ChannelHandlerContext, _ up: Channel) {
        guard context.channel.isActive else {
            up.close(promise: nil)
            connected(nil)
            context.close(promise: nil)
            return
        }
        upstream = up
        connected(up)
        let (client, server) = SpliceHandler.pair(idleTimeout: idleTimeout)
        do {
            try up.pipeline.syncOperations.addHandler(server)
            try context.pipeline.syncOperations.addHandler(client, position: .after(self))
        } catch {
            up.close(promise: nil)
            context.close(promise: nil)
            return
        }
        spliced(client, server)
        for b in held { up.write(b, promise: nil) }
        held.removeAll()
        up.flush()
        if inputClosed { up.close(mode: .output, promise: nil) }
        let downstream = context.channel
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        // Both sides start reading now: the client (whose first read this handler held
        // back) and the upstream (connected with autoRead off so nothing came early).
        downstream.read()
        up.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in up.close(promise: nil) }
    }
}
