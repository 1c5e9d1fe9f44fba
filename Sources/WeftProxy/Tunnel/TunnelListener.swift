import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
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
        // Each stream is one proxied connection: many at once, with windows for bulk TCP.
        let counter = StreamCounter(eventLoop: ch.eventLoop, idleTimeout: settings.idleTimeout, server: true)
        _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: TunnelHTTP2.connection(server: true),
                                            streamConfiguration: TunnelHTTP2.stream,
                                            streamDelegate: counter.delegate) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(TunnelTargetHandler(runtime: runtime, peer: peer, remote: remote))
            }
        }
        try sync.addHandler(counter)
        try sync.addHandler(CloseOnError { error in
            // A peer whose certificate the callback refused was counted there.
            if !peer.checked { runtime.refuse(.tunnel, .handshake, "\(error)", peer: remote) }
        })
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
            refuse(context, 400, .badRequest, "stream did not start with CONNECT headers")
            return
        }
        let headers = h.headers
        guard headers.first(name: ":method") == "CONNECT", !headers.contains(name: ":scheme"), !headers.contains(name: ":path"),
              let authority = headers.first(name: ":authority"), let (address, port) = IPAddress.parseEndpoint(authority) else {
            refuse(context, 400, .badRequest, "malformed CONNECT request")
            return
        }
        guard let identity = peer.value else {
            refuse(context, 403, .certificate, "no verified peer identity")
            return
        }
        let tables = runtime.tables.withLockedValue { $0 }
        let targetKey = SocketKey(address, port)
        guard let target = tables.inboundTargets[targetKey] else {
            refuse(context, 403, .notLocalWorkload, "CONNECT to \(authority), which is not a workload port of this node")
            return
        }
        guard let loop = runtime.loops[ObjectIdentifier(context.eventLoop)]?.value else {
            refuse(context, 503, .unavailable, "unknown event loop")
            return
        }
        // The original client (Forwarded: for=) is believed only when it is a workload of
        // the verified identity on the peer's own node: an agent can vouch for its own
        // workloads' addresses, never for arbitrary ones (source.ip, ipBlocks).
        let forwarded = Self.forwardedFor(headers.first(name: "forwarded")).flatMap { tables.workloadsByAddress[$0] }.flatMap { we in
            we.node == peer.node && we.identity(trustDomain: tables.trustDomain) == identity ? we : nil
        }
        let client = forwarded?.spec.address ?? remote.address
        let peerInfo = InboundPeer(identity: identity, sourceWorkload: forwarded?.id, target: target, path: .tunnel)
        if let denied = runtime.authorizeTCP(peerInfo, client: client, destination: targetKey, loop: loop) {
            refuse(context, 403, .denied, "\(identity) to \(authority): \(denied)")
            return
        }
        let conn = runtime.inboundContext(peerInfo, client: client, destination: targetKey, tables: tables, loop: loop)
        let channel = context.channel
        do {
            let sync = context.pipeline.syncOperations
            try sync.addHandler(TunnelStreamHandler(), position: .after(self))
            try runtime.serve(conn, channel) { ok in TunnelStreamHandler.respond(channel, status: ok ? "200" : "503", end: !ok) }
            sync.removeHandler(context: context, promise: nil)
        } catch {
            refuse(context, 503, .unavailable, "\(error)")
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ status: Int, _ kind: TunnelRefusal, _ reason: String) {
        runtime.refuse(.tunnel, kind, reason, peer: remote)
        let payload = HTTP2Frame.FramePayload.headers(.init(headers: HPACKHeaders([(":status", String(status))]), endStream: true))
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

