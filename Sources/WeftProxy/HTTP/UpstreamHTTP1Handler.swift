import NIOCore
import NIOHTTP1

/// Receives what an upstream HTTP/1.1 connection delivers.
protocol UpstreamHTTP1Delegate: AnyObject {
    func upstreamRead(_ part: HTTPClientResponsePart, from conn: UpstreamHTTP1Handler)
    func upstreamReadComplete(from conn: UpstreamHTTP1Handler)
    func upstreamClosed(_ conn: UpstreamHTTP1Handler)
    func upstreamWritabilityChanged(_ conn: UpstreamHTTP1Handler, writable: Bool)
}

/// The proxy's end of one upstream HTTP/1.1 connection: hands response parts to the
/// exchange that currently owns it, and lets that exchange pause its reads while the
/// client cannot take more (backpressure). Pooled between requests.
final class UpstreamHTTP1Handler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let endpoint: SocketKey
    weak var delegate: UpstreamHTTP1Delegate?
    /// Called once when the connection closes (the pool forgets it).
    var onClose: ((UpstreamHTTP1Handler) -> Void)?
    private(set) var context: ChannelHandlerContext?
    /// Requests sent on this connection (maxRequestsPerConnection).
    var requests = 0
    /// Scheduled close while idle in the pool.
    var idleTimer: Scheduled<Void>?
    private var paused = false
    private var pendingRead = false

    init(endpoint: SocketKey) {
        self.endpoint = endpoint
    }

    var isActive: Bool { context?.channel.isActive ?? false }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if let d = delegate {
            d.upstreamRead(part, from: self)
        } else {
            // Bytes from an idle pooled connection: it is out of step; drop it.
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete(from: self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        onClose?(self)
        onClose = nil
        delegate?.upstreamClosed(self)
        delegate = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(self, writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if paused { pendingRead = true } else { context.read() }
    }

    /// Stops or resumes reading the upstream's response.
    func setPaused(_ p: Bool) {
        paused = p
        if !p, pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    func send(_ part: HTTPClientRequestPart, flush: Bool = false) {
        guard let context else { return }
        context.write(wrapOutboundOut(part), promise: nil)
        if flush { context.flush() }
    }

    func close() { context?.close(promise: nil) }
}

/// Idle upstream HTTP/1.1 connections of one event loop, per endpoint. Only touched on
/// that loop, like Envoy's per-worker connection pools.
final class HTTP1Pool {
    private var idle: [SocketKey: [UpstreamHTTP1Handler]] = [:]
    /// Connections open per endpoint, idle or busy (connectionPool.tcp.maxConnections).
    private(set) var open: [SocketKey: Int] = [:]
    let settings: UpstreamSettings
    /// Envoy's default idle timeout for upstream connections (connectionPool.http.idleTimeout).
    static let defaultIdleTimeout = TimeAmount.hours(1)

    init(settings: UpstreamSettings) {
        self.settings = settings
    }

    /// An idle connection to `endpoint`, or a new one.
    func acquire(_ endpoint: SocketKey, on loop: EventLoop, connectTimeout: TimeAmount?) -> EventLoopFuture<UpstreamHTTP1Handler> {
        while let conn = idle[endpoint]?.popLast() {
            conn.idleTimer?.cancel()
            conn.idleTimer = nil
            if conn.isActive { return loop.makeSucceededFuture(conn) }
        }
        let handler = UpstreamHTTP1Handler(endpoint: endpoint)
        open[endpoint, default: 0] += 1
        handler.onClose = { [weak self] c in self?.forget(c) }
        return settings.connect(endpoint, on: loop, timeout: connectTimeout, halfClose: false).flatMapThrowing { ch in
            try ch.pipeline.syncOperations.addHTTPClientHandlers()
            try ch.pipeline.syncOperations.addHandler(handler)
            ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
            return handler
        }.assumeIsolated().flatMapErrorThrowing { error in
            self.open[endpoint, default: 1] -= 1
            throw error
        }.nonisolated()
    }

    /// Returns a connection whose exchange completed cleanly; it closes after `idleTimeout`.
    func release(_ conn: UpstreamHTTP1Handler, idleTimeout: TimeAmount?, maxRequests: Int?) {
        conn.delegate = nil
        conn.setPaused(false)
        guard conn.isActive, let loop = conn.context?.eventLoop else { return }
        if let max = maxRequests, max > 0, conn.requests >= max {
            conn.close()
            return
        }
        conn.idleTimer = loop.assumeIsolated().scheduleTask(in: idleTimeout ?? Self.defaultIdleTimeout) { conn.close() }
        idle[conn.endpoint, default: []].append(conn)
    }

    private func forget(_ conn: UpstreamHTTP1Handler) {
        open[conn.endpoint, default: 1] -= 1
        if open[conn.endpoint] == 0 { open[conn.endpoint] = nil }
        idle[conn.endpoint]?.removeAll { $0 === conn }
        if idle[conn.endpoint]?.isEmpty == true { idle[conn.endpoint] = nil }
    }

    /// Closes every idle connection (shutdown).
    func closeAll() {
        for conns in idle.values { for c in conns { c.close() } }
        idle.removeAll()
    }
}
