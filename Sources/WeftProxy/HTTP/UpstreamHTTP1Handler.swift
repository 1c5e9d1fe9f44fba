import NIOCore
import NIOHTTP1
import NIOHTTP2
import WeftConfig

/// Receives what an upstream HTTP/1.1 connection delivers.
protocol UpstreamHTTP1Delegate: AnyObject {
    func upstreamRead(_ part: HTTP1ClientCodec.ResponsePart, from conn: UpstreamHTTP1Handler)
    func upstreamReadComplete(from conn: UpstreamHTTP1Handler)
    func upstreamClosed(_ conn: UpstreamHTTP1Handler)
    func upstreamWritabilityChanged(_ conn: UpstreamHTTP1Handler, writable: Bool)
}

/// The proxy's end of one upstream HTTP/1.1 connection: hands response parts to the
/// exchange that currently owns it, and lets that exchange pause its reads while the
/// client cannot take more (backpressure). Pooled between requests.
final class UpstreamHTTP1Handler: ChannelDuplexHandler, RemovableChannelHandler {
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
    var delegate: UpstreamHTTP1Delegate?
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
    /// An HTTP/2 stream (one exchange), not a connection.
    var isStream = false
    /// The HTTP/2 connection a stream belongs to.
    var connection: HTTP2ConnectionState?
    /// The upstream refused the stream (RST_STREAM REFUSED_STREAM): it did not process it.
    private(set) var refused = false
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
        // A stream above the last one a GOAWAY said the server processed was not
        // processed (RFC 9113 §6.8), however the server then closed it.
        if isStream, let last = connection?.goAwayLastStreamID,
           let id = try? context.channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID), id > last {
            refused = true
        }
        idleTimer?.cancel()
        idleTimer = nil
        onClose?(self)
        onClose = nil
        delegate?.upstreamClosed(self)
        delegate = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed, closed.errorCode == .refusedStream { refused = true }
        if error is NIOHTTP2Errors.CreatedStreamAfterGoaway { refused = true }
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
        if isStream, case .head = part {
            // A stream whose HEADERS cannot be written (the connection got a GOAWAY in the
            // meantime) never reached the upstream: refused, so safe to retry elsewhere.
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.assumeIsolated().whenFailure { _ in
                self.refused = true
                self.context?.close(promise: nil)
            }
            context.write(wrapOutboundOut(.init(part)), promise: promise)
        } else {
            context.write(wrapOutboundOut(.init(part)), promise: nil)
        }
        if flush { context.flush() }
    }

    /// Sends a request head the client's HTTP/1 connection received, with the proxy's
    /// edits, as bytes (connections only: a stream is sent NIO heads).
    func sendForwarded(_ received: HTTP1RequestHead, _ rewrite: HeadRewrite, method: HTTPMethod) {
        precondition(!isStream, "an HTTP/2 stream is sent NIO heads")
        context?.write(wrapOutboundOut(.forwarded(received, rewrite, method: method)), promise: nil)
    }

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
final class HTTP1Pool {
    /// Idle connections per key, in a box each: taking one out or putting it back
    /// mutates the box, not the dictionary (a dictionary's modify accessor allocated
    /// three times per request).
    private final class IdleList {
        var connections: [UpstreamHTTP1Handler] = []
    }

    private var idle: [PoolKey: IdleList] = [:]
    private var http2: [PoolKey: EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer>] = [:]
    private var http2Channels: [PoolKey: Channel] = [:]
    private var http2States: [PoolKey: HTTP2ConnectionState] = [:]

    /// Stops handing out streams of `channel` (closed, or told to go away).
    private func forgetHTTP2(_ key: PoolKey, _ channel: Channel) {
        guard let current = http2Channels[key], current === channel else { return }
        http2Channels[key] = nil
        http2[key] = nil
        http2States[key] = nil
    }
    let dialer: Dialer
    /// Envoy's default idle timeout for upstream connections (connectionPool.http.idleTimeout).
    static let defaultIdleTimeout = TimeAmount.hours(1)

    init(dialer: Dialer) {
        self.dialer = dialer
    }

    /// An idle connection to the endpoint, taken out of the pool, if there is one: the
    /// common case of a keep-alive pool, served with no future.
    func takeIdle(_ key: PoolKey, cluster: ClusterState) -> UpstreamHTTP1Handler? {
        let list = idle[key]
        while let conn = list?.connections.popLast() {
            conn.idleTimer?.set(nil)
            if let t = conn.idleToken { cluster.removeIdle(t) }
            conn.idleToken = nil
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
            try ch.pipeline.syncOperations.addHandlers([HTTP1ClientCodec(), handler])
            ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
            return handler
        }.assumeIsolated().flatMapErrorThrowing { error in
            // Never became a channel with our handler: give the slot back here.
            if handler.context == nil { cluster.connectionClosed() }
            throw error
        }.nonisolated()
    }

    /// A new HTTP/2 stream to the endpoint, on its pooled connection (opened on first use;
    /// nil when that needs a connection the cluster has no slot for).
    func acquireStream(_ key: PoolKey, cluster: ClusterState, on loop: EventLoop, connectTimeout: TimeAmount?, idleTimeout: TimeAmount?)
        -> EventLoopFuture<UpstreamHTTP1Handler>? {
        let mux: EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer>
        let connState: HTTP2ConnectionState
        // A connection that died since its close callbacks were queued takes no streams.
        if let ch = http2Channels[key], !ch.isActive { forgetHTTP2(key, ch) }
        if let existing = http2[key], let st = http2States[key] {
            mux = existing
            connState = st
        } else {
            guard cluster.openConnection() else { return nil }
            connState = HTTP2ConnectionState()
            let watcherState = NIOLoopBound(connState, eventLoop: loop)
            let made = dialer.dial(key.endpoint, route: key.route, on: loop, timeout: connectTimeout, halfClose: false).flatMapThrowing { ch in
                // Idle (no stream) for the policy's idleTimeout, it closes, as an idle
                // HTTP/1.1 connection does.
                let counter = StreamCounter(eventLoop: ch.eventLoop, idleTimeout: idleTimeout ?? Self.defaultIdleTimeout, server: false) {
                    [weak self] in self?.forgetHTTP2(key, ch)
                }
                let m = try ch.pipeline.syncOperations.configureHTTP2Pipeline(
                    mode: .client, connectionConfiguration: .init(), streamConfiguration: .init(), streamDelegate: counter.delegate) { pushed in
                    pushed.close() // no server push through a proxy
                }
                // After a GOAWAY the connection finishes its streams but takes no new ones:
                // the next request opens another connection.
                try ch.pipeline.syncOperations.addHandler(GoAwayWatcher { [weak self] last in
                    watcherState.value.goAwayLastStreamID = last
                    self?.forgetHTTP2(key, ch)
                })
                try ch.pipeline.syncOperations.addHandler(counter)
                // A connection error fails its streams (502) instead of leaving them waiting.
                try ch.pipeline.syncOperations.addHandler(CloseOnError { _ in })
                ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
                ch.closeFuture.assumeIsolated().whenComplete { [weak self] _ in
                    self?.forgetHTTP2(key, ch)
                    cluster.connectionClosed()
                }
                self.http2Channels[key] = ch
                return m
            }
            made.assumeIsolated().whenFailure { [weak self] _ in
                if self?.http2Channels[key] == nil { self?.http2[key] = nil }
                cluster.connectionClosed()
            }
            http2[key] = made
            http2States[key] = connState
            mux = made
        }
        let endpoint = key.endpoint
        return mux.assumeIsolated().flatMap { m in
            let promise = loop.makePromise(of: Channel.self)
            m.createStreamChannel(promise: promise) { stream in
                stream.eventLoop.makeCompletedFuture {
                    let handler = UpstreamHTTP1Handler(endpoint: endpoint)
                    handler.isStream = true
                    try stream.pipeline.syncOperations.addHandlers([HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http),
                                                                    HTTP2StreamParts(), handler])
                }
            }
            return promise.futureResult
        }.nonisolated().assumeIsolated().flatMapThrowing { stream in
            // NIO hands out a stream of a connection that is already closed, and that
            // stream never activates: its request would wait forever. Fail it (a connect
            // failure, retried) instead.
            guard stream.isActive else {
                stream.close(promise: nil)
                throw ProxyError("the HTTP/2 connection to \(endpoint) closed")
            }
            let h = try stream.pipeline.syncOperations.handler(type: UpstreamHTTP1Handler.self)
            h.connection = connState
            return h
        }.nonisolated()
    }

    /// Returns a connection whose exchange completed cleanly; it closes after the policy's
    /// idleTimeout, or now if it served maxRequestsPerConnection. (An HTTP/2 stream ends with
    /// its exchange; its connection stays in the pool.)
    func release(_ conn: UpstreamHTTP1Handler, _ key: PoolKey, cluster: ClusterState, policy: ConnectionPool?) {
        let idleTimeout = policy?.idleTimeout?.timeAmount, maxRequests = policy?.maxRequestsPerConnection
        conn.delegate = nil
        conn.setPaused(false)
        if conn.isStream {
            // It ends by itself once both END_STREAMs are through, normally before the
            // next tick; one still open then (a server that answered early and reads no
            // more of a body held back by flow control) would hold a stream slot for good.
            conn.context?.eventLoop.assumeIsolated().execute { if conn.isActive { conn.close() } }
            return
        }
        guard conn.isActive, let loop = conn.context?.eventLoop else { return }
        if let max = maxRequests, max > 0, conn.requests >= max {
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

/// What the pool knows of one upstream HTTP/2 connection.
final class HTTP2ConnectionState {
    /// The last stream the server said it processed, once it sent GOAWAY.
    var goAwayLastStreamID: HTTP2StreamID?
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

/// On an upstream HTTP/2 stream, between NIO's HTTP/2-to-HTTP/1 codec and the proxy's
/// upstream handler: NIO's parts turned into the ones weft's HTTP/1 codec speaks, so the
/// handler is the same for both.
final class HTTP2StreamParts: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTP1ClientCodec.ResponsePart
    typealias OutboundIn = HTTP1ClientCodec.RequestPart
    typealias OutboundOut = HTTPClientRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): context.fireChannelRead(wrapInboundOut(.head(h)))
        case .body(let b): context.fireChannelRead(wrapInboundOut(.body(b)))
        case .end(let t): context.fireChannelRead(wrapInboundOut(.end(t)))
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let h): context.write(wrapOutboundOut(.head(h)), promise: promise)
        case .body(let b): context.write(wrapOutboundOut(.body(b)), promise: promise)
        case .end(let t): context.write(wrapOutboundOut(.end(t)), promise: promise)
        case .forwarded:
            // The exchange sends HTTP/2 upstreams NIO heads (see UpstreamHTTP1Handler.sendForwarded).
            preconditionFailure("a forwarded HTTP/1 head on an HTTP/2 stream")
        }
    }
}
