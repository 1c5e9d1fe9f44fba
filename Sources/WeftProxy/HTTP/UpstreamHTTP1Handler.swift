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
    /// Its registration as idle with the cluster (see ClusterState.addIdle).
    var idleToken: UInt64?
    /// Counts idle periods, so a reclaim meant for an earlier one does nothing.
    var idleGeneration = 0
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

/// Which pool a connection belongs to: per cluster (so circuit-breaker counts stay
/// exact when subsets share an endpoint) and endpoint.
struct PoolKey: Hashable {
    var cluster: ClusterKey
    var endpoint: SocketKey
}

/// Idle upstream HTTP/1.1 connections of one event loop. Only touched on that loop, like
/// Envoy's per-worker connection pools; the counts they are limited by are per cluster
/// (ClusterState), shared by all loops.
final class HTTP1Pool {
    private var idle: [PoolKey: [UpstreamHTTP1Handler]] = [:]
    let settings: UpstreamSettings
    /// Envoy's default idle timeout for upstream connections (connectionPool.http.idleTimeout).
    static let defaultIdleTimeout = TimeAmount.hours(1)

    init(settings: UpstreamSettings) {
        self.settings = settings
    }

    /// An idle connection to the endpoint, or a new one; nil when the cluster is at
    /// maxConnections (the caller waits or overflows).
    func acquire(_ key: PoolKey, cluster: ClusterState, on loop: EventLoop, connectTimeout: TimeAmount?)
        -> EventLoopFuture<UpstreamHTTP1Handler>? {
        while let conn = idle[key]?.popLast() {
            conn.idleTimer?.cancel()
            conn.idleTimer = nil
            if let t = conn.idleToken { cluster.removeIdle(t) }
            conn.idleToken = nil
            if conn.isActive { return loop.makeSucceededFuture(conn) }
        }
        guard cluster.openConnection() else { return nil }
        let handler = UpstreamHTTP1Handler(endpoint: key.endpoint)
        handler.onClose = { [weak self] c in
            if let t = c.idleToken { cluster.removeIdle(t) }
            self?.forget(c, key)
            cluster.connectionClosed()
        }
        return settings.connect(key.endpoint, on: loop, timeout: connectTimeout, halfClose: false).flatMapThrowing { ch in
            try ch.pipeline.syncOperations.addHTTPClientHandlers()
            try ch.pipeline.syncOperations.addHandler(handler)
            ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
            return handler
        }.assumeIsolated().flatMapErrorThrowing { error in
            // Never became a channel with our handler: give the slot back here.
            if handler.context == nil { cluster.connectionClosed() }
            throw error
        }.nonisolated()
    }

    /// Returns a connection whose exchange completed cleanly; it closes after `idleTimeout`.
    func release(_ conn: UpstreamHTTP1Handler, _ key: PoolKey, cluster: ClusterState, idleTimeout: TimeAmount?, maxRequests: Int?) {
        conn.delegate = nil
        conn.setPaused(false)
        guard conn.isActive, let loop = conn.context?.eventLoop else { return }
        if let max = maxRequests, max > 0, conn.requests >= max {
            conn.close()
            return
        }
        let next = cluster.connectionIdle(on: loop)
        if case .close = next {
            conn.close()
            return
        }
        conn.idleTimer = loop.assumeIsolated().scheduleTask(in: idleTimeout ?? Self.defaultIdleTimeout) { conn.close() }
        idle[key, default: []].append(conn)
        let bound = NIOLoopBound(conn, eventLoop: loop)
        conn.idleGeneration += 1
        let generation = conn.idleGeneration
        conn.idleToken = cluster.addIdle(on: loop) {
            // Runs on the connection's loop; by then it may have been taken for a request.
            loop.execute {
                let c = bound.value
                if c.idleToken != nil && c.idleGeneration == generation { c.close() }
            }
        }
        if case .keepAndWake(let wake) = next { wake() }
    }

    /// Closes one idle connection of `cluster` to another endpoint than `keep`, freeing a
    /// connection slot for a request that must go elsewhere; false if there is none.
    func closeIdle(cluster: ClusterKey, except keep: SocketKey) -> Bool {
        guard let key = idle.keys.first(where: { $0.cluster == cluster && $0.endpoint != keep && !(idle[$0]?.isEmpty ?? true) }),
              let conn = idle[key]?.popLast() else { return false }
        conn.idleTimer?.cancel()
        conn.close() // its onClose unregisters it and frees the slot
        return true
    }

    private func forget(_ conn: UpstreamHTTP1Handler, _ key: PoolKey) {
        idle[key]?.removeAll { $0 === conn }
        if idle[key]?.isEmpty == true { idle[key] = nil }
    }

    /// Closes every idle connection (shutdown).
    func closeAll() {
        for conns in idle.values { for c in conns { c.close() } }
        idle.removeAll()
    }
}
