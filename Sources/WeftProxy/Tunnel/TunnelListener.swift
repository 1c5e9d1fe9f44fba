import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import WeftConfig

/// The mTLS tunnel listener: TLS 1.3 connections from other nodes' agents (a client
/// certificate required and verified), each carrying HTTP/2 CONNECT streams to this
/// node's workloads.
public final class TunnelListener: Sendable {
    private let runtime: ProxyRuntime

    public init(runtime: ProxyRuntime) {
        self.runtime = runtime
    }

    /// Listens for tunnels on every address of the node (the port of Settings.tunnelPort):
    /// TLS 1.3, ALPN h2, a client certificate required and verified to the trust bundle.
    public func start() throws {
        guard let tls = runtime.tls, runtime.tunnelEnabled else { return }
        let settings = runtime.settings
        let bound = try runtime.listen(hosts: ("0.0.0.0", "::"), port: settings.tunnelPort, flag: "--tunnel-port", halfClose: false, networkFacing: true,
                               v6Missing: "IPv6 workloads cannot be reached over mTLS") { [self] ch in try accepted(ch, tls: tls) }
        runtime.channels.withLockedValue { $0 += bound.map(\.channel) }
        runtime.logger.info("mTLS tunnel listening on port \(settings.tunnelPort)", metadata: ["component": "tunnel"])
    }

    private func accepted(_ ch: Channel, tls: TunnelTLS) throws {
        let runtime = runtime, settings = runtime.settings
        guard let local = ch.localAddress.flatMap(SocketKey.init), let remote = ch.remoteAddress.flatMap(SocketKey.init) else {
            throw ProxyError("tunnel socket without addresses")
        }
        // The dialed address names the workload whose certificate this end presents.
        guard let we = runtime.tables.withLockedValue({ $0.localWorkloads[local.address] }) else {
            runtime.refuse(.tunnel, .notLocalWorkload, "dialed \(local.address), which is not a workload of this node", peer: remote)
            throw ProxyError("not a local workload address")
        }
        let context: NIOSSLContext
        do {
            context = try tls.context(for: we.id, server: true).0
        } catch {
            runtime.refuse(.tunnel, .noCertificate, "\(error)", peer: remote)
            throw error
        }
        let peer = PeerIdentity()
        let tables = runtime.tables
        // A node's CA speaks only for the workloads of that node (a compromised node
        // cannot mint another node's identities).
        let accept: @Sendable (String, String) -> String? = { id, node in
            tables.withLockedValue { $0.nodeIdentities[node]?.contains(id) == true } ? nil
                : "\(id) is not a workload identity of node \(node), whose CA issued it"
        }
        // Draining a connection from a peer: GOAWAY, so it opens new streams elsewhere; the
        // last stream id is the highest, as the streams it already opened continue.
        let session = LiveSessions.Tunnel(channel: ch, peer: peer, accept: accept, drain: {
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
            ch.writeAndFlush(goAway, promise: nil)
        }, describe: "tunnel connection from \(remote)")
        let sessions = runtime.sessions
        let verify = tls.verifier(peer: peer, accept: accept, refused: { reason in runtime.refuse(.tunnel, .certificate, reason, peer: remote) },
                                  expires: { notAfter in sessions.expire(session, at: notAfter, drainFirst: false) })
        sessions.add(session)
        let sync = ch.pipeline.syncOperations
        try sync.addHandler(NIOSSLServerHandler(context: context, customVerificationCallback: verify))
        try sync.addHandler(TLSReadCompactor())
        try sync.addHandler(HandshakeTimeoutHandler(timeout: settings.handshakeTimeout) {
            runtime.refuse(.tunnel, .handshake, "no TLS handshake within \(settings.handshakeTimeout.nanoseconds / 1_000_000_000) s", peer: remote)
        })
        let closeOnError = CloseOnError { error in
            // A peer whose certificate the callback refused was counted there.
            if !peer.checked { runtime.refuse(.tunnel, .handshake, "\(error)", peer: remote) }
        }
        // What the connection carries, by the protocol the peer asked for: HTTP requests
        // as streams of their own (weft-h2), or CONNECT streams (h2).
        try sync.addHandler(ApplicationProtocolNegotiationHandler { result, channel in
            channel.eventLoop.makeCompletedFuture {
                let handlers: [ChannelHandler]
                if case .negotiated(TunnelHTTP2.requestsALPN) = result {
                    guard let loop = runtime.loops[ObjectIdentifier(channel.eventLoop)]?.value else { throw ProxyError("unknown event loop") }
                    handlers = Self.requestHandlers(runtime: runtime, peer: peer, remote: remote, loop: loop, eventLoop: channel.eventLoop,
                                                    closeOnError: closeOnError)
                } else {
                    handlers = Self.connectHandlers(runtime: runtime, peer: peer, remote: remote, eventLoop: channel.eventLoop)
                }
                try channel.pipeline.syncOperations.addHandlers(handlers, position: .before(closeOnError))
            }
        })
        try sync.addHandler(closeOnError)
    }

    /// A requests connection: NIO's handler in frame mode and an HTTP2ServerSession whose
    /// streams each name their workload port (TunnelRequestTargets). The session checks
    /// header blocks itself (HTTP2Heads.isValidRequest), not NIO, which would check every
    /// block both ways: ~20 % of the pair's throughput for HTTP/2 (`scripts/bench mtls`).
    /// `closeOnError`: the connection's, told of the frames NIO writes (so that it closes
    /// the connection once NIO has given it up).
    static func requestHandlers(runtime: ProxyRuntime, peer: PeerIdentity, remote: SocketKey, loop: LoopState,
                                eventLoop: EventLoop, closeOnError: CloseOnError) -> [ChannelHandler] {
        let counter = StreamCounter(eventLoop: eventLoop, idleTimeout: runtime.settings.idleTimeout, server: true, drains: loop)
        var config = TunnelHTTP2.connection(server: true)
        config.headerBlockValidation = .disabled
        let h2 = NIOHTTP2Handler(mode: .server, frameDelegate: closeOnError, connectionConfiguration: config, streamConfiguration: TunnelHTTP2.stream)
        let targets = TunnelRequestTargets(runtime: runtime, peer: peer, remote: remote, loop: loop)
        let session = HTTP2ServerSession(targets: targets, counter: counter) { refusal in
            runtime.refuse(.tunnel, refusal.kind, refusal.reason, peer: remote)
        }
        return [h2, session, counter]
    }

    /// A CONNECT connection: each stream is one proxied connection, many at once, with
    /// windows for bulk TCP.
    private static func connectHandlers(runtime: ProxyRuntime, peer: PeerIdentity, remote: SocketKey, eventLoop: EventLoop) -> [ChannelHandler] {
        let counter = StreamCounter(eventLoop: eventLoop, idleTimeout: runtime.settings.idleTimeout, server: true,
                                    drains: runtime.loops[ObjectIdentifier(eventLoop)]?.value)
        let h2 = NIOHTTP2Handler(mode: .server, eventLoop: eventLoop, connectionConfiguration: TunnelHTTP2.connection(server: true),
                                 streamConfiguration: TunnelHTTP2.stream, streamDelegate: counter.delegate) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(TunnelTargetHandler(runtime: runtime, peer: peer, remote: remote))
            }
        }
        return [h2, counter]
    }
}

/// One CONNECT stream at the destination: checks the request (RFC 9113 §8.5) and that its
/// target is a workload port of this node, then hands the stream's bytes to the proxy
/// toward that workload. Refusals are answered (400 malformed, 403 not a local workload
/// port) and counted.
final class TunnelTargetHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let runtime: ProxyRuntime
    private let peer: PeerIdentity
    private let remote: SocketKey
    private var decided = false

    init(runtime: ProxyRuntime, peer: PeerIdentity, remote: SocketKey) {
        self.runtime = runtime
        self.peer = peer
        self.remote = remote
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else { return }
        decided = true
        guard case .headers(let h) = unwrapInboundIn(data) else {
            refuse(context, .init(400, .badRequest, "stream did not start with CONNECT headers"))
            return
        }
        let headers = h.headers
        guard headers.first(name: ":method") == "CONNECT", !headers.contains(name: ":scheme"), !headers.contains(name: ":path"),
              let authority = headers.first(name: ":authority") else {
            refuse(context, .init(400, .badRequest, "malformed CONNECT request"))
            return
        }
        guard let loop = runtime.loops[ObjectIdentifier(context.eventLoop)]?.value else {
            refuse(context, .init(503, .unavailable, "unknown event loop"))
            return
        }
        let destination = runtime.tunnelDestination(authority: authority, source: Self.forwardedFor(headers.first(name: "forwarded")),
                                                    peer: peer, remote: remote, loop: loop, http: false)
        guard case .success(let conn) = destination else {
            if case .failure(let refusal) = destination { refuse(context, refusal) }
            return
        }
        let channel = context.channel
        do {
            let sync = context.pipeline.syncOperations
            try sync.addHandler(TunnelStreamHandler(), position: .after(self))
            try runtime.serve(conn, channel) { ok in TunnelStreamHandler.respond(channel, status: ok ? "200" : "503", end: !ok) }
            sync.removeHandler(context: context, promise: nil)
        } catch {
            refuse(context, .init(503, .unavailable, "\(error)"))
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: TunnelStreamRefusal) {
        runtime.refuse(.tunnel, refusal.kind, refusal.reason, peer: remote)
        let payload = HTTP2Frame.FramePayload.headers(.init(headers: HPACKHeaders([(":status", String(refusal.status))]), endStream: true))
        context.writeAndFlush(wrapOutboundOut(payload), promise: nil)
    }

    /// The address in `Forwarded: for="addr"` (or `for="addr:port"`), if well formed.
    static func forwardedFor(_ value: String?) -> IPAddress? {
        guard let v = value, let r = v.range(of: "for=") else { return nil }
        var s = v[r.upperBound...].prefix { $0 != ";" && $0 != "," }.trimmingCharacters(in: .whitespaces)
        if s.hasPrefix("\""), s.hasSuffix("\""), s.count >= 2 { s = String(s.dropFirst().dropLast()) }
        if s.hasPrefix("["), s.hasSuffix("]") { s = String(s.dropFirst().dropLast()) }
        if let a = IPAddress(s) { return a }
        return IPAddress.parseEndpoint(s)?.0
    }
}

extension TunnelStreamHandler {
    /// Writes the CONNECT response on a tunnel stream, below the byte adapter.
    static func respond(_ ch: Channel, status: String, end: Bool) {
        send(ch, .headers(.init(headers: HPACKHeaders([(":status", status)]), endStream: end)))
    }
}


/// Why the destination agent refused a tunnel stream: the status it answers, the kind it
/// is counted as, and the detail logged.
struct TunnelStreamRefusal: Error {
    let status: Int
    let kind: TunnelRefusal
    let reason: String

    init(_ status: Int, _ kind: TunnelRefusal, _ reason: String) {
        self.status = status
        self.kind = kind
        self.reason = reason
    }
}

extension ProxyRuntime {
    /// Where a tunnel stream goes, as its peer agent named it: `authority` must be a
    /// workload port of this node. The original client (`source`) is believed only when
    /// it is a workload of the verified identity on the peer's own node: an agent can
    /// vouch for its own workloads' addresses, never for arbitrary ones (source.ip,
    /// ipBlocks). A TCP connection (`http` false) to a TCP port is authorized here, once;
    /// an HTTP request is authorized as it is served, unless the port is not HTTP here.
    func tunnelDestination(authority: String, source: IPAddress?, peer: PeerIdentity, remote: SocketKey, loop: LoopState,
                           http: Bool) -> Result<ConnectionContext, TunnelStreamRefusal> {
        guard let (address, port) = IPAddress.parseEndpoint(authority) else {
            return .failure(.init(400, .badRequest, "malformed target \(authority)"))
        }
        guard let identity = peer.value else {
            return .failure(.init(403, .certificate, "no verified peer identity"))
        }
        let tables = tables.withLockedValue { $0 }
        let targetKey = SocketKey(address, port)
        guard let target = tables.inboundTargets[targetKey] else {
            return .failure(.init(403, .notLocalWorkload, "\(http ? "request" : "CONNECT") to \(authority), which is not a workload port of this node"))
        }
        let vouched = source.flatMap { tables.workloadsByAddress[$0] }.flatMap { we in
            we.node == peer.node && we.identity(trustDomain: tables.trustDomain) == identity ? we : nil
        }
        let client = vouched?.spec.address ?? remote.address
        let peerInfo = InboundPeer(identity: identity, sourceWorkload: vouched, target: target, path: .tunnel)
        if let denied = authorizeTCP(peerInfo, client: client, destination: targetKey, loop: loop, asTCP: http && !target.listener.port.isHTTP) {
            return .failure(.init(403, .denied, "\(identity) to \(authority): \(denied)"))
        }
        return .success(inboundContext(peerInfo, client: client, destination: targetKey, tables: tables, loop: loop))
    }
}
