import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import WeftConfig

/// The destination end of a connection delivered to a local workload (a tunnel stream,
/// or plaintext steered to the inbound listener), as the proxy sees it.
struct InboundPeer {
    /// The peer's SPIFFE URI, verified in the TLS handshake; nil for plaintext.
    let identity: String?
    /// The client's WorkloadEntry: the one at the Forwarded address, if its identity is
    /// the verified one (an agent cannot claim a workload of another identity).
    let sourceWorkload: ResourceID?
    /// The local workload port the stream is delivered to.
    let target: InboundTarget
    /// How it arrived (what a refusal is counted as).
    let path: InboundPath
}

extension OutboundProxy {
    /// Listens for tunnels on every address of the node (the port of Settings.tunnelPort):
    /// TLS 1.3, ALPN h2, a client certificate required and verified to the trust bundle.
    public func startTunnel() throws {
        guard let tls, tunnelEnabled else { return }
        let bound = try listen(hosts: ("0.0.0.0", "::"), port: settings.tunnelPort, flag: "--tunnel-port", halfClose: false, networkFacing: true,
                               v6Missing: "IPv6 workloads cannot be reached over mTLS") { [self] ch in try tunnelAccepted(ch, tls: tls) }
        channels.withLockedValue { $0 += bound.map(\.channel) }
        logger.info("mTLS tunnel listening on port \(settings.tunnelPort)", metadata: ["component": "tunnel"])
    }

    /// The agent has identities and a tunnel port.
    var tunnelEnabled: Bool { tls != nil && settings.tunnelPort != 0 }

    /// Counts (by path and kind) and logs (with the detail) a refused inbound connection
    /// or tunnel stream.
    func refuse(_ path: InboundPath, _ kind: TunnelRefusal, _ detail: String, peer: SocketKey) {
        refusals.withLockedValue { $0[path, default: [:]][kind.rawValue, default: 0] += 1 }
        refusalLog.info("\(path.rawValue)/\(kind.rawValue)", "\(path.rawValue) from \(peer) refused (\(kind.rawValue)): \(detail)",
                        metadata: ["component": path == .tunnel ? "tunnel" : "inbound"])
    }

    /// The refusal counters in Prometheus text format.
    func renderRefusals() -> String {
        let counts = refusals.withLockedValue { $0 }
        var out = ""
        if tunnelEnabled {
            out += Self.renderCounts("weft_tunnel_refused_total", "Tunnel connections and CONNECT streams the destination agent refused, by reason.",
                                     counts[.tunnel] ?? [:], kinds: TunnelRefusal.allCases)
        }
        if settings.inboundPort != 0 {
            out += Self.renderCounts("weft_plaintext_refused_total", "Plaintext connections steered to the inbound listener that the agent refused, by reason.",
                                     counts[.plaintext] ?? [:], kinds: [.notLocalWorkload, .denied])
        }
        return out
    }

    static func renderCounts(_ name: String, _ help: String, _ counts: [String: Int], kinds: [TunnelRefusal]) -> String {
        var out = "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
        for kind in kinds { out += "\(name){reason=\"\(kind.rawValue)\"} \(counts[kind.rawValue] ?? 0)\n" }
        return out
    }

    private func tunnelAccepted(_ ch: Channel, tls: TunnelTLS) throws {
        guard let local = ch.localAddress.flatMap(SocketKey.init), let remote = ch.remoteAddress.flatMap(SocketKey.init) else {
            throw ProxyError("tunnel socket without addresses")
        }
        // The dialed address names the workload whose certificate this end presents.
        guard let we = tables.withLockedValue({ $0.localWorkloads[local.address] }) else {
            refuse(.tunnel, .notLocalWorkload, "dialed \(local.address), which is not a workload of this node", peer: remote)
            throw ProxyError("not a local workload address")
        }
        let context: NIOSSLContext
        do {
            context = try tls.context(for: we.id, server: true).0
        } catch {
            refuse(.tunnel, .noCertificate, "\(error)", peer: remote)
            throw error
        }
        let peer = PeerIdentity()
        let tables = tables
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
        let sessions = sessions
        let verify = tls.verifier(peer: peer, accept: accept, refused: { [self] reason in refuse(.tunnel, .certificate, reason, peer: remote) },
                                  expires: { notAfter in sessions.expire(session, at: notAfter, drainFirst: false) })
        sessions.add(session)
        let sync = ch.pipeline.syncOperations
        try sync.addHandler(NIOSSLServerHandler(context: context, customVerificationCallback: verify))
        try sync.addHandler(TLSReadCompactor())
        try sync.addHandler(HandshakeTimeoutHandler(timeout: settings.handshakeTimeout) { [self] in
            refuse(.tunnel, .handshake, "no TLS handshake within \(settings.handshakeTimeout.nanoseconds / 1_000_000_000) s", peer: remote)
        })
        // Each stream is one proxied connection: many at once, with windows for bulk TCP.
        let counter = StreamCounter(eventLoop: ch.eventLoop, idleTimeout: settings.idleTimeout, server: true)
        _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: TunnelHTTP2.connection(server: true),
                                            streamConfiguration: TunnelHTTP2.stream,
                                            streamDelegate: counter.delegate) { [self] stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(TunnelTargetHandler(proxy: self, peer: peer, remote: remote))
            }
        }
        try sync.addHandler(counter)
        try sync.addHandler(CloseOnError { [self] error in
            // A peer whose certificate the callback refused was counted there.
            if !peer.checked { refuse(.tunnel, .handshake, "\(error)", peer: remote) }
        })
    }

    /// Serves one accepted connection's bytes (a captured client, or a tunnel stream):
    /// opaque TCP, or HTTP/1.1 / HTTP/2 after sniffing. `answer` is told whether the
    /// upstream of a TCP connection was reached (the tunnel's CONNECT response).
    func serve(_ conn: ConnectionContext, _ ch: Channel, answer: ((Bool) -> Void)? = nil) throws {
        let sync = ch.pipeline.syncOperations
        if conn.listener.router == nil && !conn.listener.port.isHTTP {
            try sync.addHandler(makeTCPProxy(conn, answer: answer))
            return
        }
        answer?(true)
        // The first bytes are due as soon as the request's: a connection that says nothing
        // holds a socket for the header timeout, not the idle timeout's hour.
        try sync.addHandler(ProtocolSniffHandler(firstBytesTimeout: settings.requestHeaderTimeout, restTimeout: settings.requestHeaderTimeout) { [self] proto, ctx in
            do {
                switch proto {
                case .http1: try self.addHTTP1(conn, ctx)
                case .http2: try self.addHTTP2(conn, ctx)
                case .opaque:
                    // Not HTTP on an HTTP port: at the destination it passes only as
                    // plain TCP would (never as unparsed bytes past the HTTP rules).
                    if let peer = conn.inbound,
                       let denied = self.authorizeTCP(peer, client: conn.client.address, destination: conn.origin.destination, loop: conn.loop,
                                                      asTCP: true) {
                        self.refuse(peer.path, .denied, "\(conn.origin.destination): not HTTP on an HTTP port, and as TCP: \(denied)",
                                    peer: conn.client)
                        ctx.close(promise: nil)
                        return
                    }
                    try ctx.pipeline.syncOperations.addHandler(self.makeTCPProxy(conn, answer: nil), position: .after(ctx.handler))
                }
            } catch {
                ctx.close(promise: nil)
            }
        })
    }
}

extension OutboundProxy {
    /// Authorizes a connection to a plain TCP port once, when it arrives (an HTTP port is
    /// authorized request by request, unless `asTCP`: what arrived there is not HTTP);
    /// nil if allowed, else the deciding decision.
    func authorizeTCP(_ peer: InboundPeer, client: IPAddress, destination: SocketKey, loop: LoopState, asTCP: Bool = false) -> AuthzDecision? {
        guard asTCP || !peer.target.listener.port.isHTTP else { return nil }
        let request = AuthzRequest(identity: peer.identity, sourceIP: client, destinationIP: destination.address,
                                   destinationPort: destination.port, http: nil)
        let decision = peer.target.authorization.evaluate(request)
        if !decision.audited.isEmpty { loop.observe(.audit(decision, request: "TCP \(destination)", peer: peer.identity)) }
        return decision.allowed ? nil : decision
    }

    /// A connection delivered to a local workload port, from `client`.
    func inboundContext(_ peer: InboundPeer, client: IPAddress, destination: SocketKey, tables: ProxyTables, loop: LoopState) -> ConnectionContext {
        ConnectionContext(id: nextConnectionID(), client: SocketKey(client, 0), origin: ConnectionOrigin(destination: destination, cgroupID: 0),
                          listener: peer.target.listener, source: nil, tables: tables, loop: loop, clusters: clusters, inbound: peer,
                          live: self.tables, sessions: sessions)
    }

    /// Listens for plaintext that the kernel steered here (bpf_sk_assign from TC ingress,
    /// Settings.inboundPort on every address): the accepted socket's local address is the
    /// workload port the client dialed. Returns the listeners' descriptors (IPv6 or not),
    /// which the kernel is given as the only sockets it may steer into.
    @discardableResult
    public func startInbound() throws -> [(v6: Bool, fd: CInt)] {
        guard settings.inboundPort != 0 else { return [] }
        let bound = try listen(hosts: ("0.0.0.0", "::"), port: settings.inboundPort, flag: "--inbound-port", halfClose: true, networkFacing: true,
                               v6Missing: "plaintext to IPv6 workloads under policy is refused") { [self] ch in try plaintextAccepted(ch) }
        channels.withLockedValue { $0 += bound.map(\.channel) }
        logger.info("plaintext inbound listening on port \(settings.inboundPort)", metadata: ["component": "inbound"])
        return bound.map { ($0.v6, $0.fd) }
    }

    /// Plaintext for a local workload port: authorized like the tunnel's streams, with no
    /// peer identity (principals never match), then delivered.
    private func plaintextAccepted(_ ch: Channel) throws {
        guard let local = ch.localAddress.flatMap(SocketKey.init), let remote = ch.remoteAddress.flatMap(SocketKey.init) else {
            throw ProxyError("inbound socket without addresses")
        }
        let tables = tables.withLockedValue { $0 }
        guard let target = tables.inboundTargets[local] else {
            refuse(.plaintext, .notLocalWorkload, "\(local) is not a workload port of this node that a service names", peer: remote)
            throw ProxyError("not a local workload port")
        }
        guard let loop = loops[ObjectIdentifier(ch.eventLoop)]?.value else { throw ProxyError("unknown event loop") }
        let peer = InboundPeer(identity: nil, sourceWorkload: nil, target: target, path: .plaintext)
        if let denied = authorizeTCP(peer, client: remote.address, destination: local, loop: loop) {
            refuse(.plaintext, .denied, "plaintext to \(local): \(denied)", peer: remote)
            throw ProxyError("denied")
        }
        try serve(inboundContext(peer, client: remote.address, destination: local, tables: tables, loop: loop), ch)
    }
}

/// One CONNECT stream at the destination: checks the request (RFC 9113 §8.5) and that its
/// target is a workload port of this node, then hands the stream's bytes to the proxy
/// toward that workload. Refusals are answered (400 malformed, 403 not a local workload
/// port) and counted.
final class TunnelTargetHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let proxy: OutboundProxy
    private let peer: PeerIdentity
    private let remote: SocketKey
    private var decided = false

    init(proxy: OutboundProxy, peer: PeerIdentity, remote: SocketKey) {
        self.proxy = proxy
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
        let tables = proxy.tables.withLockedValue { $0 }
        let targetKey = SocketKey(address, port)
        guard let target = tables.inboundTargets[targetKey] else {
            refuse(context, 403, .notLocalWorkload, "CONNECT to \(authority), which is not a workload port of this node")
            return
        }
        guard let loop = proxy.loops[ObjectIdentifier(context.eventLoop)]?.value else {
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
        if let denied = proxy.authorizeTCP(peerInfo, client: client, destination: targetKey, loop: loop) {
            refuse(context, 403, .denied, "\(identity) to \(authority): \(denied)")
            return
        }
        let conn = proxy.inboundContext(peerInfo, client: client, destination: targetKey, tables: tables, loop: loop)
        let channel = context.channel
        do {
            let sync = context.pipeline.syncOperations
            try sync.addHandler(TunnelStreamHandler(), position: .after(self))
            try proxy.serve(conn, channel) { ok in TunnelStreamHandler.respond(channel, status: ok ? "200" : "503", end: !ok) }
            sync.removeHandler(context: context, promise: nil)
        } catch {
            refuse(context, 503, .unavailable, "\(error)")
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ status: Int, _ kind: TunnelRefusal, _ reason: String) {
        proxy.refuse(.tunnel, kind, reason, peer: remote)
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

/// How a connection reached a workload port of this node.
enum InboundPath: String {
    /// An mTLS tunnel connection or CONNECT stream.
    case tunnel
    /// Plaintext steered to the inbound listener.
    case plaintext
}

/// Why the destination agent refused a tunnel connection or stream.
enum TunnelRefusal: String, CaseIterable {
    /// The TLS handshake failed (no client certificate, wrong protocol version, garbage).
    case handshake
    /// The client certificate did not verify (chain, validity, trust domain, SAN).
    case certificate
    /// This node has no certificate for the dialed workload yet.
    case noCertificate = "no_certificate"
    /// A stream that was not a well-formed CONNECT (400).
    case badRequest = "bad_request"
    /// Dialed address or CONNECT target not a workload port of this node (403).
    case notLocalWorkload = "not_local_workload"
    /// The stream could not be served (503).
    case unavailable
    /// An AuthorizationPolicy denied the connection (plain TCP ports; HTTP requests are
    /// answered 403 one by one and counted in istio_requests_total).
    case denied
}
