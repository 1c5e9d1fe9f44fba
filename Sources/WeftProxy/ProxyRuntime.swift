import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Prometheus
import WeftConfig

/// What the kernel recorded for a captured connection (read from BPF state by the agent).
public struct ConnectionOrigin: Sendable {
    /// The VIP:port the client dialed.
    public var destination: SocketKey
    /// The cgroup id of the process that connected.
    public var cgroupID: UInt64

    /// Creates an origin.
    public init(destination: SocketKey, cgroupID: UInt64) {
        self.destination = destination
        self.cgroupID = cgroupID
    }
}

/// Per event loop state: endpoint choice, upstream pools, randomness. Touched only on its
/// own loop, so none of it needs a lock.
final class LoopState {
    private var endpointPicker = EndpointPicker()
    let pool: UpstreamPool
    /// Seeded once from the system; SystemRandomNumberGenerator costs a getrandom(2)
    /// syscall per draw, and a request draws several times (route, fault, pick, jitter).
    private var rng = SplitMix64(seed: UInt64.random(in: 0...UInt64.max))
    let observer: @Sendable (ProxyEvent) -> Void
    /// Settings.idleTimeout, for what this loop splices (opaque TCP, WebSocket sessions).
    let idleTimeout: TimeAmount
    /// Settings.streamIdleTimeout and .requestTimeout, for this loop's exchanges.
    let streamIdleTimeout: TimeAmount?
    let requestTimeout: TimeAmount?
    /// Settings.tracing: nil when requests are not traced.
    let tracing: TracingSettings?

    /// The agent is handing over to a new one: HTTP/1 responses say `Connection: close`
    /// and end their connection, HTTP/2 connections are sent GOAWAY, so clients
    /// reconnect — to the new agent.
    var draining = false
    /// This loop's open HTTP/2 client and tunnel connections, which a handover drains
    /// with GOAWAY (StreamCounter.drain).
    var http2Served: [ObjectIdentifier: StreamCounter] = [:]

    /// Client HTTP/2 connections to flush once at the end of an upstream's read burst.
    let flushes = FlushBatch()

    init(dialer: Dialer, idleTimeout: TimeAmount, streamIdleTimeout: TimeAmount? = nil, requestTimeout: TimeAmount? = nil,
         tracing: TracingSettings? = nil, observer: @escaping @Sendable (ProxyEvent) -> Void) {
        pool = UpstreamPool(dialer: dialer, flushes: flushes)
        self.tracing = tracing
        self.idleTimeout = idleTimeout
        self.streamIdleTimeout = streamIdleTimeout
        self.requestTimeout = requestTimeout
        self.observer = observer
    }

    var dialer: Dialer { pool.dialer }

    func random() -> Double { Double.random(in: 0..<1, using: &rng) }

    /// A random UUID (version 4) for x-request-id.
    func requestID() -> String {
        let a = rng.next(), b = rng.next()
        let hi = (a & 0xffff_ffff_ffff_0fff) | 0x4000, lo = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000
        // Written in place: one allocation, where formatting the parts took several.
        return String(unsafeUninitializedCapacity: 36) { out in
            var i = 0
            func put(_ v: UInt64, _ digits: Int) {
                for d in stride(from: digits - 1, through: 0, by: -1) {
                    let nibble = UInt8((v >> UInt64(d * 4)) & 0xf)
                    out[i] = nibble < 10 ? 48 + nibble : 87 + nibble
                    i += 1
                }
            }
            func dash() {
                out[i] = 45
                i += 1
            }
            put(hi >> 32, 8); dash(); put((hi >> 16) & 0xffff, 4); dash(); put(hi & 0xffff, 4); dash()
            put(lo >> 48, 4); dash(); put(lo & 0xffff_ffff_ffff, 12)
            return i
        }
    }

    /// A random 64-bit value (generated consistent-hash cookies).
    func randomBits() -> UInt64 { rng.next() }

    /// An endpoint of `c`; `hash` keys consistent hashing, `state` gives LEAST_REQUEST
    /// the requests in flight.
    func picker(_ c: Cluster, exclude: Set<SocketKey>, hash: UInt64?, state: ClusterState? = nil) -> Endpoint? {
        endpointPicker.pick(c, exclude: exclude, hash: hash, random: random(), random2: random(),
                            load: { state?.active($0) ?? 0 })
    }

    func observe(_ e: ProxyEvent) { observer(e) }
}

/// One accepted connection: where it was going, who opened it, the tables of the
/// revision it was accepted under (a connection keeps its revision), its loop's state.
final class ConnectionContext {
    let id: UInt64
    let client: SocketKey
    let origin: ConnectionOrigin
    let listener: ServiceListener
    let source: WorkloadEntry?
    let tables: ProxyTables
    let loop: LoopState
    let clusters: ClusterRegistry
    /// Set on the destination side of the tunnel: who the verified peer is, and the local
    /// workload port the connection was delivered to.
    let inbound: InboundPeer?
    /// The proxy's current tables: authorization is decided by the revision in force when
    /// a request arrives, not the one the connection was accepted under.
    let live: NIOLockedValueBox<ProxyTables>
    /// Where TCP connections authorized once are kept to be judged again.
    let sessions: LiveSessions

    init(id: UInt64, client: SocketKey, origin: ConnectionOrigin, listener: ServiceListener, source: WorkloadEntry?,
         tables: ProxyTables, loop: LoopState, clusters: ClusterRegistry, inbound: InboundPeer? = nil,
         live: NIOLockedValueBox<ProxyTables>, sessions: LiveSessions) {
        self.inbound = inbound
        self.live = live
        self.sessions = sessions
        self.clusters = clusters
        self.id = id
        self.client = client
        self.origin = origin
        self.listener = listener
        self.source = source
        self.tables = tables
        self.loop = loop
    }

    /// Telemetry labels of this connection, with the endpoint that served it.
    func peers(destination ep: Endpoint?) -> Peers {
        var p = makePeers(destination: ep)
        // A memo of the series per endpoint: the labels are the same while it is.
        if memo == nil || memoEndpoint != ep?.socket {
            memo = SeriesMemo()
            memoEndpoint = ep?.socket
        }
        p.memo = memo
        return p
    }

    private var memo: SeriesMemo?
    private var memoEndpoint: SocketKey?

    private func makePeers(destination ep: Endpoint?) -> Peers {
        if let inbound {
            // The workload delivered to, and its identity where the peer's was verified.
            return Peers(client: clientText, source: inbound.sourceWorkload, destinationHost: listener.host,
                         destinationService: listener.service, destinationWorkload: inbound.target.workload, reporter: "destination",
                         sourcePrincipal: inbound.identity, destinationPrincipal: inbound.identity == nil ? nil : inbound.target.identity,
                         mutualTLS: inbound.identity != nil)
        }
        let workload = ep.flatMap { ep in ep.workload == nil ? nil : tables.workloadsByAddress[ep.socket.address] }
        // Through the tunnel, the destination agent presented the dialed workload's
        // certificate and it was verified (route(to:)'s condition for the tunnel).
        var principal: String?
        if let workload, case .tunnel = ep?.transport, source != nil, loop.dialer.tunnels != nil {
            principal = workload.identity(trustDomain: tables.trustDomain)
        }
        // The caller's own identity: a workload of this node has a certificate.
        return Peers(client: clientText, source: source, destinationHost: listener.host, destinationService: listener.service,
                     destinationWorkload: workload, sourcePrincipal: sourcePrincipal, destinationPrincipal: principal)
    }

    /// What Telemetry resources say about tracing this connection's requests: the source
    /// workload's client side, or at the destination the served workload's server side.
    lazy var tracingPolicy: TracingPolicy = {
        if let inbound { return tables.tracing[inbound.target.workload.spec.address]?.server ?? tables.meshTracing }
        return source.flatMap { tables.tracing[$0.spec.address]?.client } ?? tables.meshTracing
    }()

    /// The client's address as telemetry writes it (formatted once per connection, not
    /// per request).
    lazy var clientText = client.description

    /// The source workload's SPIFFE URI (computed once per connection).
    lazy var sourcePrincipal: String? = source?.identity(trustDomain: tables.trustDomain)

    var sourceID: ResourceID? { source?.id }

    /// How this connection reaches `ep`: through the tunnel, presenting the source
    /// workload's certificate, when the endpoint is meshed and the source has an identity
    /// (a client outside any workload has none, and goes in plaintext like any outsider —
    /// which a STRICT port refuses: the proxy's marked socket must not lend it a way past
    /// the kernel's guard).
    func route(to ep: Endpoint) -> UpstreamRoute {
        switch ep.transport {
        case .unreachable:
            return .refused("tls ISTIO_MUTUAL: \(ep.socket) is not a meshed workload")
        case .tunnel(let node):
            if loop.dialer.tunnels != nil, let s = source, let id = sourceID {
                return .tunnel(TunnelKey(source: id, sourceAddress: s.spec.address, node: node))
            }
        case .plain:
            break
        }
        if ep.requiresMutualTLS && inbound == nil {
            let who = source == nil ? "this client is no workload of the mesh" : "this connection would be plaintext"
            return .refused("\(ep.socket) accepts only mTLS (PeerAuthentication STRICT) and \(who)")
        }
        return .direct
    }

    /// Requests of this connection to meshed endpoints go as streams of the tunnel's
    /// requests connection (see route(to:): a source workload with an identity).
    var tunnelsRequests: Bool { inbound == nil && source != nil && loop.dialer.tunnels != nil }

    /// One of this node's workload ports that `route` reaches in plaintext from the proxy's
    /// own socket, which the kernel's guard lets through: the agent applies that
    /// workload's inbound rules itself, as its tunnel and inbound listener do (no
    /// principal). Nil when the destination agent already did (a tunnel or steered
    /// connection), or the endpoint is not a local workload port.
    func localPlaintextTarget(_ ep: Endpoint, route: UpstreamRoute) -> InboundTarget? {
        guard inbound == nil, case .direct = route else { return nil }
        return live.withLockedValue { $0.inboundTargets[ep.socket] }
    }

    /// The workload port this connection was delivered to as the current revision has it
    /// (nil: none any more, or not a delivered connection).
    func currentInboundTarget() -> InboundTarget? {
        guard inbound != nil else { return nil }
        let key = origin.destination
        return live.withLockedValue { $0.inboundTargets[key] }
    }

    /// The inbound authorization of a plaintext request to a local workload port (see
    /// localPlaintextTarget): nil if allowed, else the deciding decision. `http` carries
    /// the request as it goes upstream, its path normalized.
    func authorizeLocalPlaintext(_ target: InboundTarget, endpoint: SocketKey, http: AuthzRequest.HTTP?) -> AuthzDecision? {
        let request = AuthzRequest(identity: nil, sourceIP: client.address, destinationIP: endpoint.address, destinationPort: endpoint.port,
                                   http: http)
        let decision = target.authorization.evaluate(request)
        if !decision.audited.isEmpty {
            loop.observe(.audit(decision, request: http.map { "\($0.method) \($0.path)" } ?? "TCP \(endpoint)", peer: nil))
        }
        return decision.allowed ? nil : decision
    }

    /// What consistent hashing on the source address hashes: the workload's address when
    /// the kernel knows the client's workload, else the client's own address.
    var sourceHash: UInt64 { Hashing.fnv1a((source?.spec.address ?? client.address).bytes) }
}

/// What the agent's listeners share (ztunnel's split): the event loops and their per-loop
/// state (pools, tunnels), the current tables, cluster state, live sessions, connection
/// limits and refusal counters, and how an accepted connection is served once its
/// listener has placed it (`serve`: opaque TCP, or HTTP/1.1 / HTTP/2 after sniffing).
/// Each listener is a type of its own: OutboundListener (captured clients),
/// TunnelListener (mTLS from other nodes), PlaintextListener (plaintext steered to local
/// workloads).
public final class ProxyRuntime: Sendable {
    /// Listener and upstream settings.
    public struct Settings: Sendable {
        /// Port on 127.0.0.1 and ::1.
        public var port: UInt16
        /// SO_MARK on upstream sockets (the kernel never captures them).
        public var agentMark: UInt32
        /// Event loop threads.
        public var threads: Int
        /// How long an HTTP/1 client may take to send a request's line and headers.
        public var requestHeaderTimeout: TimeAmount
        /// A connection with nothing in flight closes after this (Envoy's idle_timeout):
        /// the proxy's clients, tunnel connections at both ends, and spliced sessions.
        public var idleTimeout: TimeAmount
        /// The mTLS tunnel port, on every address of the node (0: no tunnel).
        public var tunnelPort: UInt16
        /// The plaintext inbound listener the kernel steers to, on every address (0: none).
        public var inboundPort: UInt16
        /// A TLS handshake on the tunnel must be done within this.
        public var handshakeTimeout: TimeAmount = .seconds(10)
        /// An exchange with no byte either way for this long ends: 408 if nothing was
        /// answered yet (Envoy's stream_idle_timeout, 5 min). Nil: none.
        public var streamIdleTimeout: TimeAmount? = .minutes(5)
        /// A request (head and body) must be in within this (Envoy's request_timeout, off
        /// by default: long uploads are legitimate). Nil: none.
        public var requestTimeout: TimeAmount?
        /// Most client connections at once, all listeners together.
        public var maxConnections = 65536
        /// Most client connections at once from one address on the listeners the network
        /// reaches (tunnel, plaintext inbound).
        public var maxConnectionsPerSource = 1024
        /// How long a tunnel connection that must end (its peer no longer verifies, or its
        /// certificate expires) keeps the streams it carries, taking no new ones.
        public var drainPeriod: TimeAmount = .seconds(30)
        /// Distributed tracing of HTTP and gRPC requests; nil: off.
        public var tracing: TracingSettings?

        /// Seconds as a time amount; 0 or less: none.
        public static func seconds(_ s: Double) -> TimeAmount? { s > 0 ? .milliseconds(Int64(s * 1000)) : nil }

        /// Creates settings.
        public init(port: UInt16, agentMark: UInt32, threads: Int = System.coreCount, requestHeaderTimeout: TimeAmount = .seconds(10),
                    idleTimeout: TimeAmount = .hours(1), tunnelPort: UInt16 = 0, inboundPort: UInt16 = 0) {
            self.idleTimeout = idleTimeout
            self.tunnelPort = tunnelPort
            self.inboundPort = inboundPort
            self.port = port
            self.agentMark = agentMark
            self.threads = threads
            self.requestHeaderTimeout = requestHeaderTimeout
        }
    }

    /// Largest request line + header block, and header count (Envoy's defaults).
    static let maxHeaderBytes = 60 * 1024
    static let maxHeaderCount = 100
    static let maxConcurrentStreams = 100

    let settings: Settings
    let upstream: UpstreamSettings
    let group: MultiThreadedEventLoopGroup
    let loops: [ObjectIdentifier: NIOLoopBound<LoopState>]
    let tables = NIOLockedValueBox(ProxyTables())
    let clusters = ClusterRegistry()
    let channels = NIOLockedValueBox<[Channel]>([])
    /// Listening sockets handed over by the agent this one takes over from, by "HOST
    /// PORT" (set before the listeners start); each is used once.
    let inherited = NIOLockedValueBox<[String: CInt]>([:])
    /// This runtime's listening sockets (descriptor and channel), by "HOST PORT".
    let listening = NIOLockedValueBox<[(key: String, fd: CInt, channel: Channel)]>([])
    /// Connections let in once, judged again on every policy or trust change.
    let sessions: LiveSessions
    private let nextID = NIOLockedValueBox<UInt64>(0)
    let logger: Logger
    /// TLS for the tunnel (nil: no identities, no tunnel).
    let tls: TunnelTLS?
    /// The agent's one metrics registry: the proxy's counters and Istio's series.
    public let registry: PrometheusCollectorRegistry
    /// The service graph, from samples of the registry's Istio series.
    public let graph: GraphRecorder
    /// Inbound connections and tunnel streams refused, by path and reason.
    let refusals: [InboundPath: [String: Counter]]
    /// Refusal log lines, at most one per kind every 10 s.
    let refusalLog: LogThrottle
    /// The bounds on client connections.
    let limits: ConnectionLimits

    /// `observer` receives every finished request (telemetry, access log). `identities`
    /// give the tunnel its certificates and peer verification.
    /// Its counters go into `registry`.
    public init(settings: Settings, logger: Logger, identities: TunnelIdentities? = nil, registry: PrometheusCollectorRegistry = .init(),
                observer: @escaping @Sendable (ProxyEvent) -> Void = { _ in }) {
        self.settings = settings
        self.logger = logger
        self.registry = registry
        graph = GraphRecorder { registry.emitToString() }
        let sessions = LiveSessions(logger: logger, grace: settings.drainPeriod)
        self.sessions = sessions
        refusalLog = LogThrottle(logger: logger)
        refusals = Self.refusalCounters(registry, tunnel: identities != nil && settings.tunnelPort != 0, plaintext: settings.inboundPort != 0)
        limits = ConnectionLimits(total: settings.maxConnections, perSource: settings.maxConnectionsPerSource, logger: logger,
                                  registry: registry)
        let upstream = UpstreamSettings(mark: settings.agentMark)
        self.upstream = upstream
        let tls = identities.map { TunnelTLS(identities: $0) }
        self.tls = tls
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, settings.threads))
        var loops: [ObjectIdentifier: NIOLoopBound<LoopState>] = [:]
        let tables = tables
        let peers: @Sendable (String) -> Set<String> = { node in tables.withLockedValue { $0.nodeIdentities[node] ?? [] } }
        for loop in group.makeIterator() {
            // Built on its own loop, the only thread that ever touches it.
            loops[ObjectIdentifier(loop)] = try! loop.submit {
                let tunnels = tls.flatMap { tls in
                    settings.tunnelPort == 0 ? nil
                        : TunnelPool(settings: upstream, tls: tls, port: settings.tunnelPort, idleTimeout: settings.idleTimeout, logger: logger, peers: peers,
                                     sessions: sessions)
                }
                return NIOLoopBound(LoopState(dialer: Dialer(settings: upstream, tunnels: tunnels), idleTimeout: settings.idleTimeout,
                                              streamIdleTimeout: settings.streamIdleTimeout, requestTimeout: settings.requestTimeout,
                                              tracing: settings.tracing, observer: observer), eventLoop: loop)
            }.wait()
        }
        self.loops = loops
    }

    /// Binds an IPv4 and an IPv6 listener on `port` (the IPv6 one IPv6-only: IPv4 has its
    /// own socket, a dual-stack one would see v4-mapped addresses). IPv4 must work; a host
    /// without IPv6 gets a warning saying what is lost (`v6Missing`) — but a port someone
    /// else holds is an error on either family: whoever held [::1]:15001 would receive
    /// what the kernel redirects to the agent. Returns the channels and their descriptors
    /// (IPv6 or not).
    /// Every accepted connection counts against ConnectionLimits; `networkFacing` ones
    /// also against the per-source bound.
    @discardableResult
    func listen(hosts: (v4: String, v6: String), port: UInt16, flag: String, halfClose: Bool, networkFacing: Bool = false, v6Missing: String,
                accept: @escaping @Sendable (Channel) throws -> Void) throws -> [(channel: Channel, v6: Bool, fd: CInt)] {
        var bound: [(channel: Channel, v6: Bool, fd: CInt)] = []
        let limits = limits, listener = String(flag.dropFirst(2).dropLast(5))
        for host in [hosts.v4, hosts.v6] {
            // Accepting starts once the agent has its config (setAccepting): a connection
            // that comes first waits in the kernel's queue rather than finding no route.
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.autoRead, value: false)
                .childChannelOption(.allowRemoteHalfClosure, value: halfClose)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        guard let remote = ch.remoteAddress.flatMap(SocketKey.init),
                              limits.admit(ch, source: remote.address, networkFacing: networkFacing, listener: listener) else {
                            throw ProxyError("connection over the limits")
                        }
                        try accept(ch)
                    }
                }
            do {
                let fd = try listeningSocket(host: host, port: port)
                let ch = try bootstrap.withBoundSocket(fd).wait()
                try ListeningSocket.setBacklog(fd)
                bound.append((ch, host == hosts.v6, fd))
                listening.withLockedValue { $0.append((Self.listenerKey(host, port), fd, ch)) }
            } catch let failure as ListeningSocket.Failure where host == hosts.v6 && failure.familyMissing {
                logger.warning("no listener on [\(host)]:\(port) (\(failure)): \(v6Missing)", metadata: ["component": "proxy"])
            } catch {
                for c in bound { try? c.channel.close().wait() }
                throw ProxyError("cannot listen on \(host.contains(":") ? "[\(host)]" : host):\(port) (\(flag)): \(error)")
            }
        }
        return bound
    }

    /// "HOST PORT": how a listening socket is named in a handover.
    public static func listenerKey(_ host: String, _ port: UInt16) -> String { "\(host) \(port)" }

    /// A listening socket for `host:port`: the one the agent this one takes over from
    /// passed on, else a new one.
    func listeningSocket(host: String, port: UInt16, v6Only: Bool = true) throws -> CInt {
        if let fd = inherited.withLockedValue({ $0.removeValue(forKey: Self.listenerKey(host, port)) }) { return fd }
        return try ListeningSocket.bind(host: host, port: port, v6Only: v6Only)
    }

    /// Serve on these listening sockets (handed over, by "HOST PORT") where the listeners
    /// about to start would bind the same address.
    public func inherit(_ sockets: [String: CInt]) { inherited.withLockedValue { $0 = sockets } }

    /// Closes the handed-over sockets no listener took (one turned off); their names.
    public func closeUnusedInherited() -> [String] {
        let left = inherited.withLockedValue { i in defer { i = [:] }; return i }
        for fd in left.values { close(fd) }
        return left.keys.sorted()
    }

    /// The listening sockets this agent serves on, by "HOST PORT": what it passes on to
    /// the agent that takes over.
    public func handoverSockets() -> [(key: String, fd: CInt)] {
        listening.withLockedValue { $0.map { ($0.key, $0.fd) } }
    }

    /// Starts, stops or resumes accepting on the listening sockets, which stay open. The
    /// agent starts once its config is programmed; a handover pauses before passing them,
    /// so that two processes never accept from one socket (the one that loses the race
    /// reads nothing after epoll said there was a connection: NIO asserts that cannot
    /// happen, and a debug build stops there). Connections that come meanwhile wait in
    /// the kernel's accept queue.
    public func setAccepting(_ on: Bool) {
        let chans = listening.withLockedValue { $0.map(\.channel) }
        for c in chans { try? c.setOption(ChannelOptions.autoRead, value: on).wait() }
    }

    /// Hands the listening sockets over for good: this agent accepts no more connections
    /// (the sockets live on in the new agent), its HTTP/1 responses from now on close
    /// their connections, its HTTP/2 clients and tunnel peers are sent GOAWAY
    /// (StreamCounter.drain), and the tunnels it opened take no new streams. Returns once
    /// every event loop has been told.
    public func startDraining() {
        let chans = listening.withLockedValue { l in defer { l = [] }; return l.map(\.channel) }
        channels.withLockedValue { c in c.removeAll { ch in chans.contains { $0 === ch } } }
        for c in chans { try? c.close().wait() }
        for loop in group.makeIterator() {
            try? loop.submit { [self] in
                guard let state = loops[ObjectIdentifier(loop)]?.value else { return }
                state.draining = true
                for c in state.http2Served.values { c.drain() }
                state.dialer.tunnels?.retireAll()
            }.wait()
        }
    }

    /// Client connections open now, all listeners.
    public var openConnections: Int { limits.openNow }

    /// Switches to a new revision's tables. Connections already accepted keep theirs for
    /// routing; authorization follows the new one: requests as they come, open TCP
    /// connections and tunnel peers judged again now (and closed if refused).
    public func update(_ t: ProxyTables) {
        clusters.update(t)
        tables.withLockedValue { old in
            let generation = old.generation + 1
            old = t
            old.generation = generation
        }
        sessions.recheckStreams(t) { s, kind, reason in refuse(s.path, kind, reason, peer: s.client) }
        trustChanged()
    }

    /// Workload certificates were minted or renewed: tunnel connections that present an
    /// older one take no new streams from now on (and the HTTP/1 connections kept alive
    /// over them are not used again), so they close on their own well before their peer
    /// cuts them at that certificate's end. Checking only when a new stream is wanted is
    /// not enough: a pooled HTTP/1 connection never wants one, and its tunnel was cut
    /// under a request.
    public func certificatesRenewed() {
        for loop in group.makeIterator() {
            loop.execute { [self] in loops[ObjectIdentifier(loop)]?.value.dialer.tunnels?.retireRenewed() }
        }
    }

    /// The trust bundle changed: every tunnel peer is verified again, and those that no
    /// longer verify lose their connection.
    public func trustChanged() {
        if let tls { sessions.recheckTunnels(tls.identities) }
    }

    /// Serves the registry's exposition on `host`:`port`; `collect` runs before each
    /// scrape (values read from elsewhere, such as the kernel's counters).
    public func serveMetrics(host: String, port: UInt16, collect: @escaping @Sendable () -> Void = {}) throws {
        let display = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        do {
            // One socket for --metrics-address, as NIO's bind made it (`::` takes IPv4 too).
            let fd = try listeningSocket(host: host, port: port, v6Only: false)
            let ch = try MetricsServer.start(group: group, socket: fd, render: { [self] in
                collect()
                limits.collect()
                return registry.emitToBuffer()
            }, graph: graph)
            // The graph's rates need earlier samples of the series: one every few seconds.
            ch.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(Int64(GraphRecorder.interval * 1000))) { [graph] _ in
                graph.sample()
            }
            channels.withLockedValue { $0.append(ch) }
            listening.withLockedValue { $0.append((Self.listenerKey(host, port), fd, ch)) }
            logger.info("metrics on http://\(display)/metrics", metadata: ["component": "proxy"])
        } catch {
            throw ProxyError("cannot serve metrics on \(display) (--metrics-address, --metrics-port): \(error)")
        }
    }

    /// Stops listening and closes every connection.
    public func stop() {
        let chans = channels.withLockedValue { c in defer { c = [] }; return c }
        for c in chans { try? c.close().wait() }
        try? group.syncShutdownGracefully()
    }

    /// A new connection id (logs).
    func nextConnectionID() -> UInt64 { nextID.withLockedValue { $0 += 1; return $0 } }

    func addHTTP1(_ conn: ConnectionContext, _ ctx: ChannelHandlerContext) throws {
        let handlers = Self.http1Handlers(conn, headerTimeout: settings.requestHeaderTimeout, idleTimeout: settings.idleTimeout)
        try ctx.pipeline.syncOperations.addHandlers(handlers, position: .after(ctx.handler))
    }

    /// What serves an HTTP/1.1 client connection, front to back (also what the HTTP/1
    /// fuzzer drives).
    static func http1Handlers(_ conn: ConnectionContext, headerTimeout: TimeAmount, idleTimeout: TimeAmount) -> [ChannelHandler] {
        let guardHandler = SlowClientGuard(headerTimeout: headerTimeout, idleTimeout: idleTimeout) {
            conn.loop.observe(.request(.refused(conn.peers(destination: nil), protocolName: "HTTP/1.1", status: 408)))
        }
        let proxy = HTTP1ProxyHandler(conn: conn)
        proxy.slowClientGuard = guardHandler
        // A response that ends the connection gets as long to go out as an exchange may
        // go without a byte either way (Envoy's stream_idle_timeout).
        let codec = HTTP1ServerCodec(maxHeadBytes: Self.maxHeaderBytes, maxFields: Self.maxHeaderCount,
                                     drainTimeout: conn.loop.streamIdleTimeout ?? idleTimeout)
        proxy.serverCodec = codec
        codec.receiver = proxy
        return [guardHandler, codec, proxy]
    }

    /// HTTP/2 from the client: NIO's handler in frame mode, then HTTP2ServerSession, which
    /// makes each stream one exchange. The limits bound what one connection can make the
    /// agent hold: 100 concurrent streams, 60 KiB of headers, a 4 KiB HPACK table, a few
    /// CONTINUATION frames, and NIO's reset-rate limit (200 RST_STREAM in 30 s → GOAWAY
    /// ENHANCE_YOUR_CALM, the Rapid Reset defence Envoy also applies).
    func addHTTP2(_ conn: ConnectionContext, _ ctx: ChannelHandlerContext) throws {
        let logger = logger, client = conn.client, id = conn.id
        let handlers = Self.http2Handlers(conn, eventLoop: ctx.eventLoop, idleTimeout: settings.idleTimeout) { error in
            logger.info("HTTP/2 client \(client) closed: \(error)", metadata: ["component": "proxy", "conn_id": "\(id)"])
        }
        try ctx.pipeline.syncOperations.addHandlers(handlers, position: .after(ctx.handler))
    }

    /// What serves an HTTP/2 client connection, front to back (also what the HTTP/2 fuzzer
    /// drives). `closed` hears why a connection was given up.
    static func http2Handlers(_ conn: ConnectionContext, eventLoop: EventLoop, idleTimeout: TimeAmount,
                              closed: @escaping (Error) -> Void) -> [ChannelHandler] {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: Self.maxConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: Self.maxHeaderBytes),
            HTTP2Setting(parameter: .headerTableSize, value: 4096),
        ]
        connection.maximumSequentialContinuationFrames = 5
        // Blocks are checked by the session itself (HTTP2Heads.isValidRequest in,
        // isValidResponse out), at a fraction of what NIO's checks cost.
        connection.headerBlockValidation = .disabled
        connection.maximumRecentlyResetStreams = CloseOnError.clientResets
        // After NIO has given the connection up (one of its flood guards, a frame no peer
        // may send) and sent its GOAWAY, the connection is closed, rather than left open to
        // the abuser until the idle timeout.
        let closeOnError = CloseOnError(closed)
        let h2 = NIOHTTP2Handler(mode: .server, frameDelegate: closeOnError, connectionConfiguration: connection, streamConfiguration: .init())
        let counter = StreamCounter(eventLoop: eventLoop, idleTimeout: idleTimeout, server: true, drains: conn.loop)
        return [h2, HTTP2ServerSession(conn: conn, counter: counter), counter, closeOnError]
    }

    /// Opaque TCP to the tcp route's (or the service's) endpoint, within the cluster's
    /// maxConnections (over it the client is closed at once: Envoy's UO for TCP) and
    /// avoiding endpoints outlier detection ejected. At a tunnel's destination the
    /// cluster is the local workload port; `answer` learns whether it was reached.
    func makeTCPProxy(_ conn: ConnectionContext, answer: ((Bool) -> Void)?) -> TCPProxyHandler {
        let t = conn.tables
        let cluster: Cluster?
        if let inbound = conn.inbound {
            cluster = inbound.target.cluster
        } else {
            let dest = t.tcpDestination(conn.listener, sourceLabels: conn.source?.spec.labels ?? [:], random: conn.loop.random())
            cluster = dest.flatMap { t.cluster(for: $0, dialedPort: conn.listener.port.number) } ?? t.defaultCluster(conn.listener)
        }
        let state = cluster.map { clusters.state($0) }
        // A TCP connection has no request attributes to hash: those keys pick at random.
        let hash: UInt64? = { if case .maglev = cluster?.loadBalancer { return conn.sourceHash } else { return nil } }()
        let endpoint = cluster.flatMap { c in conn.loop.picker(c, exclude: state?.ejected() ?? [], hash: hash, state: state) }
        let timeout = cluster?.connectionPool?.connectTimeout?.timeAmount
        let log = refusalLog
        return TCPProxyHandler(
            idleTimeout: conn.loop.idleTimeout,
            connect: { loop in
                guard let ep = endpoint, let state else { return loop.makeFailedFuture(ProxyError("no endpoint")) }
                let route = conn.route(to: ep)
                // What this connection is authorized as, to be judged again on changes:
                // as the tunnel's or inbound listener's peer, or (plaintext to this node's
                // workload) with no principal.
                var admitted: (SocketKey, AuthzRequest, InboundPath)?
                if let inbound = conn.inbound {
                    admitted = (conn.origin.destination, AuthzRequest(identity: inbound.identity, sourceIP: conn.client.address,
                                                                      destinationIP: conn.origin.destination.address,
                                                                      destinationPort: conn.origin.destination.port, http: nil), inbound.path)
                } else if let target = conn.localPlaintextTarget(ep, route: route) {
                    if let denied = conn.authorizeLocalPlaintext(target, endpoint: ep.socket, http: nil) {
                        return loop.makeFailedFuture(ProxyError("plaintext to \(ep.socket) denied: \(denied)"))
                    }
                    admitted = (ep.socket, AuthzRequest(identity: nil, sourceIP: conn.client.address, destinationIP: ep.socket.address,
                                                        destinationPort: ep.socket.port, http: nil), .plaintext)
                }
                guard state.openConnection() else { return loop.makeFailedFuture(ProxyError("maxConnections reached (UO)")) }
                return conn.loop.dialer.dial(ep.socket, route: route, on: loop, timeout: timeout, halfClose: true).map { ch in
                    ch.closeFuture.whenComplete { _ in state.connectionClosed() }
                    if let (target, request, path) = admitted {
                        conn.sessions.add(.init(channel: ch, target: target, request: request, path: path, client: conn.client))
                    }
                    return ch
                }.flatMapErrorThrowing { error in
                    state.connectionClosed()
                    state.record(ep.socket, .localFailure)
                    throw error
                }
            },
            connected: { ch in
                answer?(ch != nil)
                let record = TCPRecord(peers: conn.peers(destination: endpoint), upstream: endpoint?.socket.description,
                                       sentBytes: 0, receivedBytes: 0, flags: ch == nil ? ["UF"] : [])
                conn.loop.observe(.tcpOpened(record))
                if ch == nil {
                    log.info("tcp-upstream", "tcp connection to \(conn.origin.destination): upstream \(endpoint?.socket.description ?? "none") failed or overflowed",
                             metadata: ["component": "proxy", "conn_id": "\(conn.id)"])
                    conn.loop.observe(.tcpClosed(record))
                } else if let ep = endpoint {
                    state?.record(ep.socket, .success)
                }
            },
            spliced: { client, server in
                // Reported once, when the client's side closes (the other follows it).
                client.onClose = { c in
                    conn.loop.observe(.tcpClosed(TCPRecord(
                        peers: conn.peers(destination: endpoint), upstream: endpoint?.socket.description,
                        sentBytes: server.bytesRead, receivedBytes: c.bytesRead, flags: [])))
                }
            })
    }
}

extension ProxyRuntime {
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
                case .silent where conn.listener.port.isHTTP:
                    // Nothing to proxy, and nothing an HTTP server would answer: closed
                    // here, as Envoy's HTTP connection manager does, rather than opening
                    // an upstream connection only to half-close it.
                    ctx.close(promise: nil)
                case .opaque, .silent:
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

/// A proxy failure, one line.
public struct ProxyError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}
