import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import WeftConfig

/// Receives what an upstream HTTP/1.1 connection delivers.
protocol ExchangeUpstreamDelegate: AnyObject {
    func upstreamRead(_ part: HTTP1ClientCodec.ResponsePart, from conn: any ExchangeUpstream)
    func upstreamReadComplete(from conn: any ExchangeUpstream)
    func upstreamClosed(_ conn: any ExchangeUpstream)
    func upstreamWritabilityChanged(_ conn: any ExchangeUpstream, writable: Bool)
}

/// The proxy's end of one upstream HTTP/1.1 connection: hands response parts to the
/// exchange that currently owns it, and lets that exchange pause its reads while the
/// client cannot take more (backpressure). Pooled between requests.
final class UpstreamHTTP1Handler: ChannelDuplexHandler, RemovableChannelHandler, ExchangeUpstream {
    typealias InboundIn = HTTP1ClientCodec.ResponsePart
    typealias OutboundIn = HTTP1ClientCodec.RequestPart
    typealias OutboundOut = HTTP1ClientCodec.RequestPart

    let endpoint: SocketKey
    /// The endpoint as the access log and metrics write it, formatted once per connection
    /// rather than once per request.
    private(set) lazy var endpointText = endpoint.description
    /// The exchange using the connection. Held strongly (a weak reference costs a side
    /// table per exchange); every way an exchange lets go of the connection clears it —
    /// release to the pool, close, abandon — and so does the connection closing.
    var delegate: ExchangeUpstreamDelegate?
    /// Called once when the connection closes (the pool forgets it).
    var onClose: ((UpstreamHTTP1Handler) -> Void)?
    private(set) var context: ChannelHandlerContext?
    /// Requests sent on this connection (maxRequestsPerConnection).
    var requests = 0
    /// Closes the connection once idle in the pool for its idle timeout (one timer for
    /// the connection's life, moved at each release).
    var idleTimer: DeadlineTimer?
    /// Its registration as idle with the cluster (see ClusterState.addIdle).
    var idleToken: UInt64?
    /// Counts idle periods, so a reclaim meant for an earlier one does nothing.
    var idleGeneration = 0
    var isStream: Bool { false }
    var refused: Bool { false }
    var connection: UpstreamHTTP1Handler? { self }
    func released() {}
    private var paused = false
    private var pendingRead = false

    init(endpoint: SocketKey) {
        self.endpoint = endpoint
    }

    var isActive: Bool { context?.channel.isActive ?? false }

    /// Set when this connection is a CONNECT stream of a tunnel connection: that
    /// connection's stream counter (held strongly: a weak load costs on every request,
    /// and the stream, so this handler, ends with the connection).
    var tunnel: StreamCounter?
    /// Over a tunnel connection that takes no new streams: not to be used again (it
    /// would keep the connection open until it is cut, at its peer's certificate's end).
    var overRetiredTunnel: Bool { tunnel?.retired ?? false }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        codec?.receiver = nil
        codec = nil
    }

    /// The connection's codec, which hands this handler the response parts by a call
    /// (`received`) and is handed the request parts by one (`send`).
    private(set) var codec: HTTP1ClientCodec?

    /// The codec and this handler, for the connection's pipeline.
    func handlers() -> [ChannelHandler] {
        let codec = HTTP1ClientCodec()
        codec.receiver = self
        self.codec = codec
        return [codec, self]
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received(unwrapInboundIn(data))
    }

    /// A response part from the codec.
    func received(_ part: HTTP1ClientCodec.ResponsePart) {
        if let d = delegate {
            d.upstreamRead(part, from: self)
        } else {
            // Bytes from an idle pooled connection: it is out of step; drop it.
            context?.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete(from: self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
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

    func send(_ part: HTTPClientRequestPart, flush: Bool) {
        guard let context else { return }
        if let codec { codec.send(.init(part), promise: nil) } else { context.write(wrapOutboundOut(.init(part)), promise: nil) }
        if flush { context.flush() }
    }

    /// Sends a request head the client's HTTP/1 connection received, with the proxy's
    /// edits, as bytes.
    func sendForwarded(_ received: HTTP1RequestHead, _ rewrite: HeadRewrite, method: HTTPMethod) {
        if let codec {
            codec.send(.forwarded(received, rewrite, method: method), promise: nil)
        } else {
            context?.write(wrapOutboundOut(.forwarded(received, rewrite, method: method)), promise: nil)
        }
    }

    func sendForwarded(_ block: HPACKHeaders, _ rewrite: HeadRewrite, method: HTTPMethod) {
        preconditionFailure("an HTTP/1.1 connection is sent HTTP/1 heads")
    }

    func flush() { context?.flush() }

    func close() { context?.close(promise: nil) }
}

/// Which pool a connection belongs to: per cluster (so circuit-breaker counts stay
/// exact when subsets share an endpoint) and endpoint.
struct PoolKey: Hashable {
    var cluster: ClusterKey
    var endpoint: SocketKey
    /// Through the tunnel the route includes the source identity: a connection that
    /// presented one workload's certificate never carries another's requests.
    var route: UpstreamRoute = .direct
}

/// Upstream connections of one event loop: idle HTTP/1.1 connections, and one multiplexed
/// HTTP/2 connection per cluster endpoint. Only touched on that loop, like Envoy's
/// per-worker connection pools; the counts they are limited by are per cluster
/// (ClusterState), shared by all loops.
final class UpstreamPool {
    /// Idle connections per key, in a box each: taking one out or putting it back
    /// mutates the box, not the dictionary (a dictionary's modify accessor allocated
    /// three times per request).
    private final class IdleList {
        var connections: [UpstreamHTTP1Handler] = []
    }

    private var idle: [PoolKey: IdleList] = [:]
    /// The HTTP/2 connection per key that new streams go on: up, or still connecting.
    private var http2: [PoolKey: HTTP2ClientSession] = [:]
    /// What flushes the client connections an upstream HTTP/2 connection's read burst wrote to.
    let flushes: FlushBatch

    let dialer: Dialer
    /// Envoy's default idle timeout for upstream connections (connectionPool.http.idleTimeout).
    static let defaultIdleTimeout = TimeAmount.hours(1)

    init(dialer: Dialer, flushes: FlushBatch) {
        self.dialer = dialer
        self.flushes = flushes
    }

    /// An idle connection to the endpoint, taken out of the pool, if there is one: the
    /// common case of a keep-alive pool, served with no future.
    func takeIdle(_ key: PoolKey, cluster: ClusterState) -> UpstreamHTTP1Handler? {
        let list = idle[key]
        while let conn = list?.connections.popLast() {
            conn.idleTimer?.set(nil)
            if let t = conn.idleToken { cluster.removeIdle(t) }
            conn.idleToken = nil
            if conn.overRetiredTunnel {
                conn.close()
                continue
            }
            if conn.isActive { return conn }
        }
        return nil
    }

    /// An idle connection to the endpoint, or a new one; nil when the cluster is at
    /// maxConnections (the caller waits or overflows).
    func acquire(_ key: PoolKey, cluster: ClusterState, on loop: EventLoop, connectTimeout: TimeAmount?)
        -> EventLoopFuture<UpstreamHTTP1Handler>? {
        if let conn = takeIdle(key, cluster: cluster) { return loop.makeSucceededFuture(conn) }
        guard cluster.openConnection() else { return nil }
        let handler = UpstreamHTTP1Handler(endpoint: key.endpoint)
        handler.onClose = { [weak self] c in
            if let t = c.idleToken { cluster.removeIdle(t) }
            self?.forget(c, key)
            cluster.connectionClosed()
        }
        return dialer.dial(key.endpoint, route: key.route, on: loop, timeout: connectTimeout, halfClose: false).flatMapThrowing { ch in
            try ch.pipeline.syncOperations.addHandlers(handler.handlers())
            handler.tunnel = try? ch.parent?.pipeline.syncOperations.handler(type: StreamCounter.self)
            ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
            return handler
        }.assumeIsolated().flatMapErrorThrowing { error in
            // Never became a channel with our handler: give the slot back here.
            if handler.context == nil { cluster.connectionClosed() }
            throw error
        }.nonisolated()
    }

    /// A stream of the endpoint's HTTP/2 connection when that is up: the common case,
    /// served with no future.
    func takeStream(_ key: PoolKey) -> HTTP2UpstreamStream? {
        http2[key]?.makeStream()
    }

    /// A new HTTP/2 stream to the endpoint, on its pooled connection (opened on first use;
    /// nil when that needs a connection the cluster has no slot for).
    func acquireStream(_ key: PoolKey, cluster: ClusterState, on loop: EventLoop, connectTimeout: TimeAmount?, idleTimeout: TimeAmount?)
        -> EventLoopFuture<any ExchangeUpstream>? {
        if let session = http2[key] {
            if let stream = session.makeStream() { return loop.makeSucceededFuture(stream) }
            if !session.isReady && !session.retired { return streamWhenReady(session, key) }
            // Closed, or told to go away: the next stream opens another connection.
            if http2[key] === session { http2[key] = nil }
        }
        guard cluster.openConnection() else { return nil }
        let session = HTTP2ClientSession(endpoint: key.endpoint, loop: loop, flushes: flushes)
        session.onRetire = { [weak self, weak session] in
            if let self, let session, self.http2[key] === session { self.http2[key] = nil }
        }
        http2[key] = session
        let made = dialer.dial(key.endpoint, route: key.route, on: loop, timeout: connectTimeout, halfClose: false).flatMapThrowing { ch in
            // Idle (no stream) for the policy's idleTimeout, it closes, as an idle
            // HTTP/1.1 connection does.
            let counter = StreamCounter(eventLoop: ch.eventLoop, idleTimeout: idleTimeout ?? Self.defaultIdleTimeout, server: false) {
                [weak session] in session?.retire()
            }
            try ch.pipeline.syncOperations.addHandlers(HTTP2ClientSession.handlers(session, counter: counter))
            session.start()
            ch.closeFuture.whenComplete { _ in cluster.connectionClosed() }
            ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
        }
        made.whenFailure { _ in
            // Never became a connection: its slot is given back here, and the pool forgets it.
            cluster.connectionClosed()
        }
        made.assumeIsolated().whenFailure { [weak self] _ in
            session.retire()
            if let self, self.http2[key] === session { self.http2[key] = nil }
        }
        return streamWhenReady(session, key)
    }

    private func streamWhenReady(_ session: HTTP2ClientSession, _ key: PoolKey) -> EventLoopFuture<any ExchangeUpstream> {
        let endpoint = key.endpoint
        return session.ready.futureResult.assumeIsolated().flatMapThrowing { () -> any ExchangeUpstream in
            // A connection that closed or went away as it came up takes no stream: a
            // connect failure, retried.
            guard let stream = session.makeStream() else { throw ProxyError("the HTTP/2 connection to \(endpoint) closed") }
            return stream
        }.nonisolated()
    }

    /// Returns a connection whose exchange completed cleanly; it closes after the policy's
    /// idleTimeout, or now if it served maxRequestsPerConnection or rides a retired tunnel
    /// connection. (An HTTP/2 stream ends with its exchange; its connection stays in the
    /// pool.)
    func release(_ upstream: any ExchangeUpstream, _ key: PoolKey, cluster: ClusterState, policy: ConnectionPool?) {
        guard let conn = upstream.connection else {
            upstream.released()
            return
        }
        let idleTimeout = policy?.idleTimeout?.timeAmount, maxRequests = policy?.maxRequestsPerConnection
        conn.delegate = nil
        conn.setPaused(false)
        guard conn.isActive, let loop = conn.context?.eventLoop else { return }
        if let max = maxRequests, max > 0, conn.requests >= max {
            conn.close()
            return
        }
        if conn.overRetiredTunnel {
            conn.close()
            return
        }
        // Requests wait for a connection, and idle ones are reclaimed for them, only under
        // a maxConnections limit: without one the cluster need not hear of idle ones.
        let limited = cluster.limits.maxConnections < ClusterState.unlimited
        let next = limited ? cluster.connectionIdle(on: loop) : .keep
        if case .close = next {
            conn.close()
            return
        }
        if conn.idleTimer == nil { conn.idleTimer = DeadlineTimer(on: loop) { [weak conn] in conn?.close() } }
        conn.idleTimer?.set(in: idleTimeout ?? Self.defaultIdleTimeout)
        if let list = idle[key] {
            list.connections.append(conn)
        } else {
            let list = IdleList()
            list.connections.append(conn)
            idle[key] = list
        }
        guard limited else { return }
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
        guard let list = idle.first(where: { $0.key.cluster == cluster && $0.key.endpoint != keep && !$0.value.connections.isEmpty })?.value,
              let conn = list.connections.popLast() else { return false }
        conn.idleTimer?.set(nil)
        conn.close() // its onClose unregisters it and frees the slot
        return true
    }

    private func forget(_ conn: UpstreamHTTP1Handler, _ key: PoolKey) {
        guard let list = idle[key] else { return }
        list.connections.removeAll { $0 === conn }
        if list.connections.isEmpty { idle[key] = nil }
    }
}

/// Sees connection-level HTTP/2 frames (the multiplexer passes stream 0's on) and reports
/// a GOAWAY from the upstream with its last stream id.
final class GoAwayWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    private let onGoAway: (HTTP2StreamID) -> Void

    init(_ onGoAway: @escaping (HTTP2StreamID) -> Void) {
        self.onGoAway = onGoAway
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .goAway(let last, _, _) = unwrapInboundIn(data).payload { onGoAway(last) }
    }
}
