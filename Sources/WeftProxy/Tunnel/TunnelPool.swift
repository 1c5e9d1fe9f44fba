import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP2
import NIOSSL
import NIOTLS
import WeftConfig

/// Which tunnel a proxied connection rides: whose certificate is presented, to which node.
/// Connections to the same node from the same workload share one TLS connection.
struct TunnelKey: Hashable, Sendable {
    /// The source workload (one of this node's; its certificate is presented).
    var source: ResourceID
    /// Its address, sent as the original client (Forwarded: for=…).
    var sourceAddress: IPAddress
    /// The destination workload's node.
    var node: String
}

/// The TLS 1.3 + HTTP/2 connections of one event loop to other nodes' agents, one per
/// TunnelKey; each proxied connection is one CONNECT stream on it. Only touched on its
/// loop.
final class TunnelPool {
    private var connections: [TunnelKey: EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer>] = [:]
    private var channels: [TunnelKey: Channel] = [:]
    /// The serial of the certificate each connection presented.
    private var serials: [TunnelKey: String] = [:]
    /// The connections carrying HTTP requests as streams of their own (ALPN weft-h2), one
    /// per TunnelKey: the session, its channel once connected, the serial of the
    /// certificate it presented, and the source address as its streams name it.
    private var requests: [TunnelKey: (session: HTTP2ClientSession, channel: Channel?, serial: String, source: String)] = [:]
    private var targetTexts: [SocketKey: String] = [:]
    private let settings: UpstreamSettings
    private let tls: TunnelTLS
    private let port: Int
    private let logger: Logger
    /// The identities a node's agent may present (from the current tables).
    private let peers: @Sendable (String) -> Set<String>
    /// Where each connection's peer is kept, to be verified again when trust changes.
    private let sessions: LiveSessions

    /// A connection with no stream for this long closes.
    private let idleTimeout: TimeAmount

    init(settings: UpstreamSettings, tls: TunnelTLS, port: UInt16, idleTimeout: TimeAmount, logger: Logger,
         peers: @escaping @Sendable (String) -> Set<String>, sessions: LiveSessions) {
        self.peers = peers
        self.sessions = sessions
        self.idleTimeout = idleTimeout
        self.settings = settings
        self.tls = tls
        self.port = Int(port)
        self.logger = logger
    }

    /// A CONNECT stream to `target` through the tunnel `key`, dialing `via` (any address
    /// of the destination node: its agent listens on all of them) when there is no
    /// connection yet. The peer agent must present an identity of a workload of that
    /// node. The stream is returned open (2xx received), not reading until the caller
    /// turns autoRead on.
    func open(_ key: TunnelKey, via: IPAddress, target: SocketKey, on loop: EventLoop, timeout: TimeAmount?,
              retry: Bool = true) -> EventLoopFuture<Channel> {
        // A renewed certificate (or a new signer) is presented from the next stream on:
        // the old connection keeps its streams until they end, and takes no new ones.
        if connections[key] != nil, serials[key] != tls.identities.serial(for: key.source) { forget(key) }
        if let ch = channels[key], !ch.isActive { forget(key, ch) }
        let pooled = connections[key] != nil ? channels[key] : nil
        let mux = connections[key] ?? connect(key, via: via, on: loop, timeout: timeout)
        let stream = openStream(mux, key, target: target, on: loop)
        guard retry, let pooled else { return stream }
        // A pooled connection may be going away under a new stream (its peer drained it:
        // NIO refuses streams after a GOAWAY): once more, on a new connection.
        // The pool belongs to `loop`, where the stream's future completes.
        let pool = NIOLoopBound(self, eventLoop: loop)
        return stream.flatMapError { error in
            guard error is TunnelStreamLost else { return loop.makeFailedFuture(error) }
            pool.value.forget(key, pooled)
            return pool.value.open(key, via: via, target: target, on: loop, timeout: timeout, retry: false)
        }
    }

    private func openStream(_ mux: EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer>, _ key: TunnelKey, target: SocketKey,
                            on loop: EventLoop) -> EventLoopFuture<Channel> {
        let forwardedFor = key.sourceAddress
        return mux.flatMap { m in
            let opened = loop.makePromise(of: Void.self)
            let stream = loop.makePromise(of: Channel.self)
            m.createStreamChannel(promise: stream) { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(TunnelStreamHandler(opened: opened))
                    try ch.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
                }
            }
            return stream.futureResult.flatMap { ch in
                // A stream of a connection that already closed never activates.
                guard ch.isActive else {
                    ch.close(promise: nil)
                    return loop.makeFailedFuture(TunnelStreamLost(description: "the tunnel connection to node \(key.node) closed"))
                }
                TunnelStreamHandler.send(ch, .headers(.init(headers: connectRequest(target: target, forwardedFor: forwardedFor))))
                ch.read() // the response
                return opened.futureResult.map { ch }.flatMapErrorThrowing { error in
                    ch.close(promise: nil)
                    throw error
                }
            }
        }
    }

    private func connect(_ key: TunnelKey, via: IPAddress, on loop: EventLoop,
                         timeout: TimeAmount?) -> EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer> {
        let logger = logger, idleTimeout = idleTimeout, port = port
        let bound = NIOLoopBound(self, eventLoop: loop)
        let (secured, serial) = secureChannel(key, via: via, alpn: TunnelHTTP2.connectALPN, on: loop, timeout: timeout) { ch in
            // Draining our own connection: new streams of its key get a new one.
            bound.value.forget(key, ch)
        }
        serials[key] = serial
        let made = secured.flatMapThrowing { ch in
            let sync = ch.pipeline.syncOperations
            let counter = StreamCounter(eventLoop: ch.eventLoop, idleTimeout: idleTimeout, server: false) { [weak self] in self?.forget(key, ch) }
            let m = try sync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: TunnelHTTP2.connection(server: false),
                                                    streamConfiguration: TunnelHTTP2.stream,
                                                    streamDelegate: counter.delegate) { pushed in
                pushed.close()
            }
            // After a GOAWAY the connection finishes its streams; new ones get a new one.
            try sync.addHandler(GoAwayWatcher { [weak self] _ in self?.forget(key, ch) })
            try sync.addHandler(counter)
            try sync.addHandler(CloseOnError { error in
                logger.warning("tunnel to \(via):\(port) (node \(key.node)) failed: \(error)", metadata: ["component": "tunnel"])
            })
            ch.closeFuture.assumeIsolated().whenComplete { [weak self] _ in self?.forget(key, ch) }
            ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
            self.channels[key] = ch
            return m
        }
        made.assumeIsolated().whenFailure { [weak self] _ in
            if self?.channels[key] == nil { self?.connections[key] = nil }
        }
        connections[key] = made
        return made
    }

    /// A TCP connection to the tunnel port of `key`'s node at `via`, with TLS 1.3 set up on
    /// it (ALPN `alpn`, `key.source`'s certificate, the peer verified to be a workload
    /// identity of that node) and registered with the live sessions, whose `drain` stops
    /// it taking new streams; with the serial of the certificate presented (nil: none).
    private func secureChannel(_ key: TunnelKey, via: IPAddress, alpn: String, on loop: EventLoop, timeout: TimeAmount?,
                               drain: @escaping (Channel) -> Void) -> (EventLoopFuture<Channel>, serial: String?) {
        let context: NIOSSLContext, serial: String
        do {
            (context, serial) = try tls.context(for: key.source, server: false, alpn: alpn)
            logger.info("tunnel \(alpn == TunnelHTTP2.requestsALPN ? "for requests " : "")to node \(key.node) via \(via) as \(key.source.namespace)/\(key.source.name) (certificate \(serial))",
                        metadata: ["component": "tunnel"])
        } catch {
            return (loop.makeFailedFuture(error), nil)
        }
        let logger = logger
        let address = SocketKey(via, UInt16(port))
        let peer = PeerIdentity()
        let peers = peers
        let accept: @Sendable (String, String) -> String? = { id, node in
            if node != key.node { return "\(id) is issued by node \(node)'s CA, but this tunnel goes to node \(key.node)" }
            return peers(key.node).contains(id) ? nil : "\(id) is not a workload identity of node \(key.node)"
        }
        // The session, once there is a channel (verification runs after the connect).
        let session = NIOLockedValueBox<LiveSessions.Tunnel?>(nil)
        let what = "tunnel to \(address) (node \(key.node))"
        let sessions = sessions
        let verify = tls.verifier(peer: peer, accept: accept, refused: { reason in
            logger.warning("\(what) refused the peer: \(reason)", metadata: ["component": "tunnel"])
        }, expires: { notAfter in
            if let s = session.withLockedValue({ $0 }) { sessions.expire(s, at: notAfter, drainFirst: true) }
        })
        let secured = settings.connect(address, on: loop, timeout: timeout, halfClose: false).flatMapThrowing { ch in
            let bound = NIOLoopBound(drain, eventLoop: loop)
            let s = LiveSessions.Tunnel(channel: ch, peer: peer, accept: accept, drain: { bound.value(ch) }, describe: what)
            session.withLockedValue { $0 = s }
            sessions.add(s)
            let sync = ch.pipeline.syncOperations
            try sync.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil, customVerificationCallback: verify))
            try sync.addHandler(TLSReadCompactor())
            try sync.addHandler(HandshakeTimeoutHandler(timeout: timeout ?? UpstreamSettings.defaultConnectTimeout) {
                logger.warning("\(what): no TLS handshake within the connect timeout", metadata: ["component": "tunnel"])
            })
            return ch
        }
        return (secured, serial)
    }

    // MARK: requests as streams

    /// A stream for one HTTP request to `target` (a workload port of `key`'s node) on the
    /// requests connection of `key`, if one is up and takes streams.
    func takeRequestStream(_ key: TunnelKey, target: SocketKey) -> HTTP2UpstreamStream? {
        if let r = requests[key], r.serial != tls.identities.serial(for: key.source) { forgetRequests(key) }
        guard let r = requests[key], let s = r.session.makeStream() else { return nil }
        s.tunnelFields = (targetText(target), r.source)
        return s
    }

    /// The same once a requests connection is up: an existing one still coming up, or a new
    /// one. Its requests go as HTTP/2 streams of their own, each naming its target and
    /// original client (TunnelHTTP2.targetField, .sourceField), to be served by the
    /// destination agent as they arrive: no CONNECT stream, no HTTP/1 inside.
    func requestStream(_ key: TunnelKey, via: IPAddress, target: SocketKey, on loop: EventLoop, timeout: TimeAmount?,
                       flushes: FlushBatch, retry: Bool = true) -> EventLoopFuture<any ExchangeUpstream> {
        if let s = takeRequestStream(key, target: target) { return loop.makeSucceededFuture(s) }
        let session: HTTP2ClientSession
        if let r = requests[key], !r.session.isReady, !r.session.retired {
            session = r.session
        } else {
            if requests[key] != nil { forgetRequests(key) }
            session = connectRequests(key, via: via, on: loop, timeout: timeout, flushes: flushes)
        }
        let made = loop.makePromise(of: (any ExchangeUpstream).self)
        session.ready.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                // A connection that closed or went away as it came up takes no stream: a
                // connect failure, retried.
                guard let s = session.makeStream(), let source = self.requests[key]?.source else {
                    made.fail(ProxyError("the tunnel connection to node \(key.node) closed"))
                    return
                }
                s.tunnelFields = (self.targetText(target), source)
                made.assumeIsolated().succeed(s)
            case .failure(let error) where retry && error is TunnelStreamLost:
                // Forgotten before it was up (a handover's drain, a renewal): its requests
                // wait for the connection that replaces it, not counted as a failed attempt.
                self.requestStream(key, via: via, target: target, on: loop, timeout: timeout, flushes: flushes, retry: false)
                    .assumeIsolated().whenComplete { made.assumeIsolated().completeWith($0) }
            case .failure(let error):
                made.fail(error)
            }
        }
        return made.futureResult
    }

    private func connectRequests(_ key: TunnelKey, via: IPAddress, on loop: EventLoop, timeout: TimeAmount?,
                                 flushes: FlushBatch) -> HTTP2ClientSession {
        let session = HTTP2ClientSession(endpoint: SocketKey(via, UInt16(port)), loop: loop, flushes: flushes)
        let bound = NIOLoopBound(self, eventLoop: loop)
        let logger = logger, idleTimeout = idleTimeout, port = port
        let (made, serial) = secureChannel(key, via: via, alpn: TunnelHTTP2.requestsALPN, on: loop, timeout: timeout) { [weak session] _ in
            if let session { bound.value.forgetRequests(key, session) }
        }
        requests[key] = (session, nil, serial ?? "", key.sourceAddress.description)
        session.onRetire = { [weak session] in
            if let session { bound.value.forgetRequests(key, session) }
        }
        made.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let ch):
                do {
                    // Idle (no stream) for the idle timeout, it closes.
                    let counter = StreamCounter(eventLoop: ch.eventLoop, idleTimeout: idleTimeout, server: false) { [weak session] in session?.retire() }
                    // Streams wait for the handshake: one that fails (the peer refused, or
                    // an agent that does not speak weft-h2) fails them as a connect
                    // failure, which may be retried, not as streams cut after sending.
                    let gate = ProtocolGate(TunnelHTTP2.requestsALPN, node: key.node) { session.start() }
                    try ch.pipeline.syncOperations.addHandler(gate)
                    try ch.pipeline.syncOperations.addHandlers(HTTP2ClientSession.handlers(session, counter: counter, tunnel: true) { error in
                        logger.warning("tunnel for requests to \(via):\(port) (node \(key.node)) failed: \(error)", metadata: ["component": "tunnel"])
                    })
                    if bound.value.requests[key]?.session === session {
                        bound.value.requests[key]?.channel = ch
                    } else {
                        ch.close(promise: nil) // forgotten (renewed, drained) while it connected
                    }
                    ch.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in ch.close(promise: nil) }
                } catch {
                    ch.close(promise: nil)
                    session.ready.fail(error)
                }
            case .failure(let error):
                session.retire()
                session.ready.fail(error)
            }
        }
        return session
    }

    private func forgetRequests(_ key: TunnelKey, _ session: HTTP2ClientSession) {
        guard requests[key]?.session === session else { return }
        forgetRequests(key)
    }

    /// New requests of `key` go to a new connection; the old one finishes its streams and
    /// closes once it has none.
    private func forgetRequests(_ key: TunnelKey) {
        guard let r = requests.removeValue(forKey: key) else { return }
        r.session.retire()
        if let ch = r.channel { retire(ch) }
        // Requests waiting for it to come up are told now, and wait for its replacement
        // (requestStream): it will take no stream. Closing it did not tell them — a
        // connection closed as it came up (connectRequests) never failed `ready` — and a
        // handover's drain left a gRPC call waiting until its deadline (the soak saw it).
        if !r.session.isReady {
            r.session.ready.fail(TunnelStreamLost(description: "the tunnel connection to node \(key.node) was retired before it was up"))
        }
    }

    /// Connections that present a certificate of their source workload renewed since take
    /// no new streams (the check `open` and `takeRequestStream` make as they go).
    func retireRenewed() {
        for key in Array(connections.keys) where serials[key] != tls.identities.serial(for: key.source) { forget(key) }
        for key in Array(requests.keys) where requests[key]?.serial != tls.identities.serial(for: key.source) { forgetRequests(key) }
    }

    /// Every tunnel connection finishes its streams and closes (the agent is handing
    /// over: its peers, its own tunnel listener among them, must not wait on it).
    func retireAll() {
        for key in Array(channels.keys) { forget(key) }
        for key in Array(requests.keys) { forgetRequests(key) }
    }

    /// A target as its stream field carries it, formatted once per endpoint.
    private func targetText(_ target: SocketKey) -> String {
        if let t = targetTexts[target] { return t }
        if targetTexts.count >= 4096 { targetTexts.removeAll() } // endpoints come and go
        let t = target.description
        targetTexts[target] = t
        return t
    }

    private func forget(_ key: TunnelKey, _ channel: Channel) {
        guard let current = channels[key], current === channel else { return }
        forget(key)
    }

    /// New streams of `key` go to a new connection; the old one closes when its last
    /// stream does (NIO closes an HTTP/2 connection only when asked, so ask once idle).
    private func forget(_ key: TunnelKey) {
        if let ch = channels[key] { retire(ch) }
        channels[key] = nil
        connections[key] = nil
        serials[key] = nil
    }

    private func retire(_ channel: Channel) {
        // GOAWAY tells the peer no more streams come; the connection goes when the
        // streams it carries are done, checked here at a slow pace. Pooled HTTP/1
        // connections over its streams close once idle (UpstreamHTTP1Handler.overRetiredTunnel).
        (try? channel.pipeline.syncOperations.handler(type: StreamCounter.self))?.retired = true
        channel.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { task in
            if !channel.isActive { task.cancel(); return }
            if (try? channel.pipeline.syncOperations.handler(type: StreamCounter.self))?.open == 0 {
                task.cancel()
                channel.close(promise: nil)
            }
        }
    }
}

/// Holds a tunnel requests connection's streams until its TLS handshake is done and chose
/// `alpn`; an agent that answered without it (an older version, which serves CONNECT
/// streams only) fails the connection with an error that says so.
final class ProtocolGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Any
    private let alpn: String
    private let node: String
    private let open: () -> Void

    init(_ alpn: String, node: String, open: @escaping () -> Void) {
        self.alpn = alpn
        self.node = node
        self.open = open
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            if negotiated == alpn {
                context.fireUserInboundEventTriggered(event)
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                open()
            } else {
                context.fireErrorCaught(ProxyError("node \(node)'s agent does not speak \(alpn) (it chose \(negotiated ?? "no protocol")): an older weft?"))
                context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
