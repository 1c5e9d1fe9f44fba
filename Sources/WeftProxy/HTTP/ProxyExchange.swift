import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import WeftConfig

/// One request through the proxy: route, pick an endpoint, send, retry when the route's
/// policy and safety allow, enforce timeouts, relay the response.
final class ProxyExchange: ExchangeUpstreamDelegate {
    /// Requests with bodies up to this size are held whole, so they can be retried.
    static let maxReplayBytes = 64 * 1024
    /// Connection-level headers that never cross a proxy (RFC 9110 §7.6.1).
    static let hopByHopNames = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
                                "trailer", "proxy-authenticate", "proxy-authorization"]
    static let hopByHop = Set(hopByHopNames)

    /// One of hopByHopNames, in any case: by length first, so that most names are passed
    /// over with no comparison (one pass over a message's fields, not one per name).
    static func isHopByHop(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { isHopByHop(UnsafeRawBufferPointer($0)) }
    }

    static func isHopByHop(_ p: UnsafeRawBufferPointer) -> Bool {
        switch p.count {
        case 2: return HTTP1RequestHead.equalsLowercased(p, "te")
        case 7: return HTTP1RequestHead.equalsLowercased(p, "upgrade") || HTTP1RequestHead.equalsLowercased(p, "trailer")
        case 10: return HTTP1RequestHead.equalsLowercased(p, "connection") || HTTP1RequestHead.equalsLowercased(p, "keep-alive")
        case 16: return HTTP1RequestHead.equalsLowercased(p, "proxy-connection")
        case 17: return HTTP1RequestHead.equalsLowercased(p, "transfer-encoding")
        case 18: return HTTP1RequestHead.equalsLowercased(p, "proxy-authenticate")
        case 19: return HTTP1RequestHead.equalsLowercased(p, "proxy-authorization")
        default: return false
        }
    }

    /// Whether the client keeps its connection after this response: always on HTTP/2
    /// (streams end, connections stay), per the request on HTTP/1 — except after a request
    /// asking to switch protocols (`Upgrade`, e.g. curl's h2c, or CONNECT): what follows
    /// such a request may be another protocol's bytes, which weft does not switch to, so
    /// they are never read as a request. It closes instead, as RFC 9110 allows.
    /// Whether the client connection stays open after this exchange (HTTP/1); a draining
    /// agent ends it (closingIfDraining).
    private var keepAlive: Bool
    /// gRPC: HTTP/2 with content-type application/grpc*.
    private var isGRPC: Bool { client.http2 && (head.headers.first(name: "content-type")?.lowercased().hasPrefix("application/grpc") ?? false) }

    /// Held strongly: the exchange can outlive its stream (a timer or an upstream callback
    /// still due); the client lets go of the exchange when it ends, which breaks the cycle.
    let client: any ExchangeClient
    let head: HTTPRequestHead
    /// The request carries a body (known from its head, or its HTTP/2 HEADERS frame).
    let hasBody: Bool
    /// A WebSocket handshake (an HTTP/1.1 GET asking to upgrade to websocket), which Istio
    /// lets through on HTTP ports: on a 101 both connections become opaque byte streams.
    let webSocket: Bool
    /// The upstream said 101: its end switches both connections to bytes.
    private var switching = false
    let started = NIODeadline.now()
    let startTime = Date()
    /// The client's connection, held here: read on every step, and through the client's
    /// protocol each read was a dynamic call.
    private let conn: ConnectionContext

    // Request side.
    private var held: [ByteBuffer] = []
    private var heldBytes = 0
    private var requestBytes = 0
    private var replayable = true
    /// The whole request is in. A request with no body is from its head on: an HTTP/2
    /// upstream is then sent one HEADERS frame with END_STREAM, not a HEADERS frame and an
    /// empty DATA frame to end it later (a server that answered first resets the stream
    /// still open: RST_STREAM per request, which NIO's Rapid Reset guard counts).
    private(set) var requestComplete: Bool

    // Routing.
    private var decision: ForwardDecision?
    private var cluster: Cluster?
    /// Speak HTTP/2 to the cluster's endpoints (Cluster.upstreamHTTP2, else as the client).
    private var upstreamHTTP2 = false
    /// Each attempt is a stream of the tunnel's requests connection to the endpoint's node.
    private var tunnelRequests = false
    private var rewrite: HeadRewrite?
    /// The request head as the client's HTTP/1 connection received it (nil on HTTP/2
    /// streams): what an HTTP/1.1 upstream is sent, edited by `rewrite`.
    let received: HTTP1RequestHead?
    private var retry: RetryStateMachine?
    private var tried: Set<SocketKey> = []
    private var lastEndpoint: SocketKey?
    /// lastEndpoint as text, from the connection that carried the attempt (formatted once).
    private var lastEndpointText: String?
    /// The pool the current attempt's connection belongs to.
    private var poolKey: PoolKey?
    /// The endpoint of the last attempt (telemetry's destination).
    private var lastTarget: Endpoint?
    /// The endpoint counted as having this request in flight (LEAST_REQUEST).
    private var activeEndpoint: SocketKey?
    /// Set-Cookie for a consistent-hash cookie the proxy generated.
    private var setCookie: String?
    private var hashComputed = false
    private var hashValue: UInt64?
    private var attempts = 0

    // Current attempt.
    private var upstream: (any ExchangeUpstream)?
    private var sentParts = 0
    private var sentEnd = false
    private var clusterState: ClusterState?
    private var requestCounted = false
    private var retryInFlight = false
    private var waitID: UInt64?
    private var mirrorTo: Cluster?
    private var routeTimer: Scheduled<Void>?
    private var tryTimer: Scheduled<Void>?

    // Response side.
    private var responseStarted = false
    private(set) var finished = false
    private var status = 0
    private var flags: [String] = []
    private var responseBytes = 0
    private var upstreamKeepAlive = false
    /// gRPC status of the response (from headers of a trailers-only response, or trailers).
    private var grpcStatus: Int?
    /// gRPC status that came in the response headers, to be sent as trailers.
    private var trailersFromHead: HTTPHeaders?
    private var requestID: String?
    /// This request's part in a trace (tracing on).
    private var trace: RequestTrace?

    /// The request's header block as the client's HTTP/2 stream received it (nil on
    /// HTTP/1): what an HTTP/2 upstream is sent, edited by `rewrite`.
    let receivedBlock: HPACKHeaders?

    init(client: any ExchangeClient, head: HTTPRequestHead, received: HTTP1RequestHead? = nil, block: HPACKHeaders? = nil, hasBody: Bool) {
        self.client = client
        receivedBlock = block
        conn = client.conn
        self.head = head
        self.received = received
        self.hasBody = hasBody
        requestComplete = !hasBody
        // What the parser read of Connection and Upgrade, when an HTTP/1 head came from it.
        let upgrade = received?.upgrade ?? head.headers.contains(name: "upgrade")
        keepAlive = client.http2 || ((received?.keepAlive ?? head.isKeepAlive) && !upgrade && head.method != .CONNECT)
        webSocket = !client.http2 && upgrade && head.method == .GET && head.headers["upgrade"].contains { value in
            value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "websocket" }
        }
    }

    // MARK: request events

    func start() {
        armTimeouts()
        if let t = conn.loop.tracing {
            // The source agent's span is the client's hop (Envoy's outbound span), the
            // destination agent's the server's.
            trace = RequestTrace.begin(t, policy: conn.tracingPolicy, headers: head.headers,
                                       name: "\(conn.listener.host):\(conn.listener.port.number)/*",
                                       kind: conn.inbound == nil ? .client : .server, throughTunnel: conn.inbound?.path == .tunnel,
                                       random: conn.loop.randomBits)
        }
        if head.method == .TRACE && hasBody {
            localReply(.badRequest)
            return
        }
        let listener = conn.listener
        let authority = head.headers.first(name: "host") ?? ""
        var uri = head.uri
        if let inbound = conn.inbound {
            // The destination's checks: the path normalized the way policy reads it, the
            // request authorized by the policies in force now (not those of when the
            // connection opened), and the workload given the path that was authorized.
            guard let target = conn.currentInboundTarget() else {
                // The workload is gone from this node: nothing here to deliver to.
                localReply(.noHealthyUpstream)
                return
            }
            guard let (path, query) = PathNormalizer.normalize(head.uri) else {
                localReply(.badPath)
                return
            }
            let request = AuthzRequest(identity: inbound.identity, sourceIP: conn.client.address, destinationIP: conn.origin.destination.address,
                                       destinationPort: conn.origin.destination.port,
                                       http: .init(host: authority, method: head.method.rawValue, path: path,
                                                   headers: head.headers.map { ($0.name, $0.value) }))
            let decision = target.authorization.evaluate(request)
            if !decision.audited.isEmpty { conn.loop.observe(.audit(decision, request: "\(head.method.rawValue) \(path)", peer: inbound.identity)) }
            guard decision.allowed else {
                localReply(.accessDenied)
                return
            }
            uri = path + (query.map { "?" + $0 } ?? "")
        }
        let routed: RouteDecision
        if let router = listener.router {
            let attrs = RequestAttributes(method: head.method.rawValue, path: uri, authority: authority,
                                          headers: head.headers, port: listener.port.number,
                                          sourceLabels: conn.source?.spec.labels ?? [:])
            routed = router.decide(attrs, random: conn.loop.random())
        } else {
            // Captured for its DestinationRule only: straight to the service.
            routed = .forward(ForwardDecision(destination: Destination(host: listener.host, port: listener.port.number),
                                              routeIndex: 0, routeName: nil, path: uri, authority: authority, timeout: nil,
                                              retries: nil, fault: nil, mirror: nil, mirrorPercentage: nil, requestHeaders: [],
                                              responseHeaders: []))
        }
        switch routed {
        case .noRoute:
            localReply(.noRoute)
        case .directResponse(let status, let body):
            localReply(LocalReply(status: HTTPResponseStatus(statusCode: status), body: body ?? "", flags: []))
        case .redirect(let location, let status):
            localReply(LocalReply(status: HTTPResponseStatus(statusCode: status), body: "", flags: [], headers: [("location", location)]))
        case .forward(let d):
            // Fault injection first, as Envoy's fault filter runs before its router: the
            // delay holds the request (and does not count against the route timeout).
            if let delay = d.fault?.delay, conn.loop.random() * 100 < delay.percentage {
                flags.append("DI")
                client.eventLoop?.assumeIsolated().scheduleTask(in: delay.fixedDelay.timeAmount) {
                    if !self.finished { self.forward(d) }
                }
                return
            }
            forward(d)
        }
    }

    private func forward(_ d: ForwardDecision) {
        decision = d
        if let abort = d.fault?.abort, conn.loop.random() * 100 < abort.percentage {
            finish(with: .faultAbort(abort))
            return
        }
        guard let c = conn.inbound?.target.cluster ?? conn.tables.cluster(for: d.destination, dialedPort: conn.listener.port.number),
              !c.endpoints.isEmpty else {
            localReply(.noHealthyUpstream)
            return
        }
        let state = conn.clusters.state(c)
        guard state.startRequest() else {
            finish(with: .overflow)
            return
        }
        requestCounted = true
        decision = d
        cluster = c
        clusterState = state
        // A WebSocket handshake goes over HTTP/1.1 (weft speaks no RFC 8441 upstream).
        upstreamHTTP2 = webSocket ? false : (c.upstreamHTTP2 ?? client.http2)
        // Through the tunnel a request that is HTTP/2 on either side of this agent is a
        // stream of the node's requests connection (the destination agent speaks the
        // port's protocol to the workload). HTTP/1.1 on both sides rides a pooled CONNECT
        // stream with HTTP/1.1 inside, which costs less than two HPACK blocks and a
        // stream's life per request (`scripts/bench mtls`: 11.6k against 9.3k req/s with
        // wrk -c32, where HTTP/2 gained 18 %).
        tunnelRequests = !webSocket && (upstreamHTTP2 || client.http2) && c.allMeshed && conn.tunnelsRequests
        if tunnelRequests { upstreamHTTP2 = true }
        rewrite = makeRewrite(d)
        if let t = d.timeout, t.nanoseconds > 0 {
            routeTimer = client.eventLoop?.assumeIsolated().scheduleTask(in: t.timeAmount) { self.routeTimeout() }
        }
        if let m = d.mirror, conn.loop.random() * 100 < (d.mirrorPercentage ?? 100) {
            mirrorTo = conn.tables.cluster(for: m, dialedPort: conn.listener.port.number)
            startMirrorIfReady()
        }
        attempt()
    }

    /// Sends the shadow copy once the whole request is held (requests over 64 KiB are not
    /// mirrored: Envoy streams them, weft does not keep them).
    private func startMirrorIfReady() {
        guard let m = mirrorTo, requestComplete, replayable, let r = rewrite, let loop = client.eventLoop else { return }
        mirrorTo = nil
        var shadow = upstreamNIOHead(r)
        shadow.headers.replaceOrAdd(name: "host", value: (r.first("host") ?? "") + "-shadow")
        // The shadow goes over HTTP/1.1 with its whole body in hand.
        shadow.version = .http1_1
        shadow.headers.remove(name: "transfer-encoding")
        if hasBody { shadow.headers.replaceOrAdd(name: "content-length", value: String(heldBytes)) }
        MirrorRequest(conn: conn, cluster: m, head: shadow, body: held).start(on: loop)
    }

    func requestBody(_ b: ByteBuffer) {
        touch()
        requestBytes += b.readableBytes
        if finished { return } // answered already: the rest of the body is read and dropped
        held.append(b)
        heldBytes += b.readableBytes
        if requestBytes > Self.maxReplayBytes { replayable = false }
        if let up = upstream {
            up.send(.body(.byteBuffer(b)), flush: true)
            sentParts = held.count
            if !replayable { dropSentParts() }
        } else if heldBytes > Self.maxReplayBytes {
            client.pauseReads(true)
        }
    }

    func requestEnd() {
        requestComplete = true
        client.setRequestDeadline(nil)
        touch()
        if let up = upstream, !finished, !sentEnd {
            up.send(.end(nil), flush: true)
            sentEnd = true
        }
        startMirrorIfReady()
    }

    /// After a part went upstream on a request too large to replay, it is not kept.
    private func dropSentParts() {
        held.removeFirst(sentParts)
        heldBytes = held.reduce(0) { $0 + $1.readableBytes }
        sentParts = 0
    }

    /// The client went before its response was done (its connection closed, its stream
    /// reset: a caller's deadline, a cancelled call). The attempt is dropped and the
    /// request is accounted for as any other — its cluster's counts given back (before,
    /// every such request stayed counted as active for the life of the agent, until a
    /// circuit breaker's maxRequests refused them all) and its record written with
    /// Envoy's DC flag and status 0 if nothing was answered yet.
    func clientGone() {
        guard !finished else { return }
        abandonAttempt()
        flags.append("DC")
        account()
    }

    func clientWritable(_ w: Bool) {
        upstream?.setPaused(!w)
    }

    // MARK: attempts

    /// What goes upstream: the client's request with the proxy's fields and the route's
    /// edits (see HeadRewrite for how it is sent).
    private func makeRewrite(_ d: ForwardDecision) -> HeadRewrite {
        var r = HeadRewrite(received: head.headers, target: d.path)
        r.replaceOrAdd(name: "host", value: d.authority)
        // Only the destination's agent may say who the client is: a client's own
        // x-forwarded-client-cert never passes, on either side of the tunnel.
        r.remove(name: "x-forwarded-client-cert")
        // The tunnel's own fields are written by the source agent only.
        r.remove(name: TunnelHTTP2.targetField)
        r.remove(name: TunnelHTTP2.sourceField)
        if let inbound = conn.inbound, let peer = inbound.identity {
            r.add(name: "x-forwarded-client-cert", value: "By=\(inbound.target.identity);URI=\(peer)")
        }
        if r.first("x-forwarded-proto") == nil { r.add(name: "x-forwarded-proto", value: "http") }
        if let t = trace, !t.outgoing.isEmpty {
            // (Removing names the request does not carry would cost every field a check.)
            if t.receivedFields { for name in TraceContextIn.fields { r.remove(name: name) } }
            for (name, value) in t.outgoing { r.add(name: name, value: value) }
        }
        if let id = r.first("x-request-id") {
            requestID = id
        } else {
            let id = conn.loop.requestID()
            requestID = id
            r.add(name: "x-request-id", value: id)
        }
        for ops in d.requestHeaders { apply(ops, to: &r) }
        if upstreamHTTP2 { return r }
        // HTTP/2 clients may split cookies into several fields; HTTP/1.1 gets one
        // (RFC 9113 §8.2.3).
        let cookies = r.values("cookie")
        if cookies.count > 1 { r.replaceOrAdd(name: "cookie", value: cookies.joined(separator: "; ")) }
        // HTTP/1.1 frames a body itself: by its Content-Length, else chunked — also for a
        // GET, which would otherwise go unframed (the upstream would read the body as the
        // next request).
        if hasBody && r.first("content-length") == nil { r.replaceOrAdd(name: "transfer-encoding", value: "chunked") }
        if webSocket {
            // Hop-by-hop, so dropped; a WebSocket handshake asks the next hop again.
            r.replaceOrAdd(name: "connection", value: "Upgrade")
            r.replaceOrAdd(name: "upgrade", value: head.headers["upgrade"].joined(separator: ", "))
        }
        return r
    }

    /// The upstream request as NIO's head (HTTP/2 upstreams, mirrors, the local inbound
    /// check); an HTTP/1.1 upstream is sent the received bytes with the rewrite instead.
    private func upstreamNIOHead(_ r: HeadRewrite) -> HTTPRequestHead {
        HTTPRequestHead(version: upstreamHTTP2 ? .http2 : .http1_1, method: head.method, uri: r.target, headers: r.headers())
    }

    private func apply<H: HeaderEditing>(_ ops: HeaderOperations, to h: inout H) {
        // In name order, so the result does not depend on dictionary order; a single
        // operation (the common route) needs no sorted copy.
        if ops.set.count == 1, let (k, v) = ops.set.first {
            h.replaceOrAdd(name: k, value: v)
        } else {
            for (k, v) in ops.set.sorted(by: { $0.key < $1.key }) { h.replaceOrAdd(name: k, value: v) }
        }
        if ops.add.count == 1, let (k, v) = ops.add.first {
            h.add(name: k, value: v)
        } else {
            for (k, v) in ops.add.sorted(by: { $0.key < $1.key }) { h.add(name: k, value: v) }
        }
        for k in ops.remove { h.remove(name: k) }
    }

    private func attempt() {
        guard let c = cluster, let state = clusterState else { return }
        // Another endpoint than those tried (Istio's previous-hosts retry predicate), never
        // an ejected one unless all are (Envoy's panic mode: then any).
        let ejected = state.ejected()
        // The previous attempt's endpoint joins those tried only now, when there is a
        // retry: a request that needs one attempt builds no set.
        if let last = lastEndpoint { tried.insert(last) }
        var exclude = tried.isEmpty ? ejected : tried.union(ejected)
        if c.endpoints.allSatisfy({ exclude.contains($0.socket) }) { exclude = ejected }
        guard let ep = conn.loop.picker(c, exclude: exclude, hash: requestHash(c), state: state) else {
            finish(with: .noHealthyUpstream)
            return
        }
        endActive()
        state.attemptStarted(ep.socket)
        activeEndpoint = ep.socket
        lastEndpoint = ep.socket
        lastEndpointText = nil
        lastTarget = ep
        attempts += 1
        sentParts = 0
        sentEnd = false
        connect(ep)
    }

    /// Gets a connection to `endpoint`: idle, new, or — at maxConnections — the next one
    /// freed, unless http1MaxPendingRequests is full too (503 UO).
    private func connect(_ ep: Endpoint) {
        guard let c = cluster, let state = clusterState, let loop = client.eventLoop else { return }
        let endpoint = ep.socket
        let route = conn.route(to: ep)
        if let target = conn.localPlaintextTarget(ep, route: route), let r = rewrite {
            let head = upstreamNIOHead(r)
            // What this node's workload would be asked in plaintext through the inbound
            // listener: the path normalized as policy reads it, and that path sent.
            guard let (path, query) = PathNormalizer.normalize(head.uri) else {
                finish(with: .badPath)
                return
            }
            let http = AuthzRequest.HTTP(host: head.headers.first(name: "host") ?? "", method: head.method.rawValue, path: path,
                                         headers: head.headers.map { ($0.name, $0.value) })
            guard conn.authorizeLocalPlaintext(target, endpoint: endpoint, http: http) == nil else {
                finish(with: .accessDenied)
                return
            }
            rewrite?.target = path + (query.map { "?" + $0 } ?? "")
        }
        let key = PoolKey(cluster: c.key, endpoint: endpoint, route: route)
        poolKey = key
        let timeout = c.connectionPool?.connectTimeout?.timeAmount
        let pool = conn.loop.pool
        let future: EventLoopFuture<any ExchangeUpstream>?
        if tunnelRequests, case .tunnel(let tunnel) = route, let tunnels = conn.loop.dialer.tunnels {
            if let up = tunnels.takeRequestStream(tunnel, target: endpoint) {
                attach(up)
                return
            }
            future = tunnels.requestStream(tunnel, via: endpoint.address, target: endpoint, on: loop, timeout: timeout, flushes: conn.loop.flushes)
        } else if let up: any ExchangeUpstream = upstreamHTTP2 ? pool.takeStream(key) : pool.takeIdle(key, cluster: state) {
            attach(up)
            return
        } else if upstreamHTTP2 {
            future = pool.acquireStream(key, cluster: state, on: loop, connectTimeout: timeout, idleTimeout: c.connectionPool?.idleTimeout?.timeAmount)
        } else {
            future = (pool.acquire(key, cluster: state, on: loop, connectTimeout: timeout)
                ?? (pool.closeIdle(cluster: c.key, except: endpoint) ? pool.acquire(key, cluster: state, on: loop, connectTimeout: timeout) : nil))
                .map { $0.map { $0 as any ExchangeUpstream } }
        }
        guard let future else {
            let me = NIOLoopBound(self, eventLoop: loop)
            guard let id = state.wait(on: loop, wake: { loop.execute { me.value.waitOver(ep) } }) else {
                finish(with: .overflow)
                return
            }
            waitID = id
            return
        }
        future.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let up):
                if self.finished {
                    pool.release(up, key, cluster: state, policy: c.connectionPool)
                    return
                }
                self.attach(up)
            case .failure:
                if !self.finished { self.attemptEnded(.connectFailure) }
            }
        }
    }

    private func waitOver(_ ep: Endpoint) {
        waitID = nil
        if !finished { connect(ep) }
    }

    private func attach(_ up: any ExchangeUpstream) {
        upstream = up
        lastEndpointText = up.endpointText
        up.delegate = self
        up.requests += 1
        up.setPaused(!client.isWritable)
        if let t = decision?.retries?.perTryTimeout, t.nanoseconds > 0 {
            tryTimer = client.eventLoop?.assumeIsolated().scheduleTask(in: t.timeAmount) { self.perTryTimeout() }
        }
        if let received, !up.isStream {
            up.sendForwarded(received, rewrite!, method: head.method)
        } else if let receivedBlock, up.isStream {
            up.sendForwarded(receivedBlock, rewrite!, method: head.method)
        } else {
            up.send(.head(upstreamNIOHead(rewrite!)))
        }
        for b in held { up.send(.body(.byteBuffer(b))) }
        sentParts = held.count
        if requestComplete {
            up.send(.end(nil))
            sentEnd = true
        }
        up.flush()
        if !replayable { dropSentParts() }
        client.pauseReads(false)
    }

    /// The retry policy's verdict on an attempt, within the cluster's retry budget
    /// (connectionPool.http.maxRetries concurrent retries; beyond it Envoy does not retry).
    private func verdict(_ outcome: AttemptOutcome) -> RetryStateMachine.Action {
        if retryInFlight {
            clusterState?.endRetry()
            retryInFlight = false
        }
        var sm = retry ?? RetryStateMachine(policy: decision?.retries, method: head.method.rawValue,
                                            bodyBuffered: requestComplete && replayable)
        var action = sm.attemptFinished(outcome, jitter: conn.loop.random())
        retry = sm
        if case .retry = action {
            if clusterState?.startRetry() ?? true {
                retryInFlight = true
            } else {
                switch outcome {
                case .response: action = .deliver(flags: [])
                case .perTryTimeout: action = .fail(status: 504, flags: ["UT"])
                default: action = .fail(status: 503, flags: ["UF"])
                }
            }
        }
        return action
    }

    private func endActive() {
        if let e = activeEndpoint { clusterState?.attemptEnded(e) }
        activeEndpoint = nil
    }

    /// The consistent-hash key of this request for cluster `c`'s load balancer, hashed:
    /// the client's address (useSourceIp), a header, a cookie or a query parameter; nil
    /// if the request has none (a random pick, as Envoy does). A missing cookie with a
    /// ttl is generated and set on the response, so the client sticks from then on.
    private func requestHash(_ c: Cluster) -> UInt64? {
        if hashComputed { return hashValue }
        hashComputed = true
        switch c.loadBalancer {
        case .maglev:
            hashValue = conn.sourceHash
        case .requestHash(.header(let name)):
            hashValue = head.headers[name].isEmpty ? nil : Hashing.fnv1a(head.headers[name].joined(separator: ","))
        case .requestHash(.queryParameter(let name)):
            let attrs = RequestAttributes(method: head.method.rawValue, path: head.uri, authority: "", port: 0)
            hashValue = attrs.queryParam(name).map(Hashing.fnv1a)
        case .requestHash(.cookie(let name, let ttl, let path)):
            let cookies = head.headers["cookie"].flatMap { $0.split(separator: ";") }.map { $0.trimmingCharacters(in: .whitespaces) }
            if let v = cookies.first(where: { $0.hasPrefix(name + "=") })?.dropFirst(name.count + 1) {
                hashValue = Hashing.fnv1a(String(v))
            } else if let ttl {
                let value = String(conn.loop.randomBits(), radix: 16)
                hashValue = Hashing.fnv1a(value)
                var c = "\(name)=\"\(value)\"; Max-Age=\(ttl.nanoseconds / 1_000_000_000)"
                if let path { c += "; Path=\(path)" }
                setCookie = c + "; HttpOnly"
            }
        default:
            hashValue = nil
        }
        return hashValue
    }

    /// Drops the current attempt's connection (its response, if any, is not wanted).
    private func abandonAttempt() {
        endActive()
        tryTimer?.cancel()
        tryTimer = nil
        if let up = upstream {
            up.delegate = nil
            up.close()
            upstream = nil
        }
    }

    /// The current attempt is over without a response to deliver: retry, or answer.
    private func attemptEnded(_ outcome: AttemptOutcome) {
        abandonAttempt()
        if let ep = lastEndpoint { clusterState?.record(ep, .localFailure) }
        act(verdict(outcome))
    }

    private func act(_ action: RetryStateMachine.Action) {
        switch action {
        case .retry(_, let backoff):
            client.eventLoop?.assumeIsolated().scheduleTask(in: .milliseconds(Int64(backoff))) {
                if !self.finished { self.attempt() }
            }
        case .deliver:
            break // only for responses, handled where the response head arrives
        case .fail(let status, let flags):
            finish(with: .upstreamFailure(status: status, flags: flags))
        }
    }

    private func routeTimeout() {
        guard !finished else { return }
        if responseStarted {
            // Part of the response is out: all that is left is to cut it, as Envoy does.
            flags.append("UT")
            upstream?.close()
            client.closeClient()
            complete()
        } else {
            abandonAttempt()
            finish(with: .routeTimeout)
        }
    }

    private func perTryTimeout() {
        guard !finished, !responseStarted else { return }
        attemptEnded(.perTryTimeout)
    }

    // MARK: upstream events

    func upstreamRead(_ part: HTTP1ClientCodec.ResponsePart, from up: any ExchangeUpstream) {
        guard up === upstream, !finished else { return }
        switch part {
        case .block(let block, let status) where client.forwardsHTTP2Blocks:
            // HTTP/2 on both sides: the upstream's block goes on as it came, with the
            // route's edits — unless it is a gRPC trailers-only response, whose status
            // goes out as trailers (below, through NIO's head).
            let grpc = block.first(name: "grpc-status").flatMap { Int($0) }
            if isGRPC && grpc != nil {
                upstreamRead(.head(HTTPResponseHead(version: .http2, status: HTTPResponseStatus(statusCode: status),
                                                    headers: HTTP2Heads.regular(block))), from: up)
                return
            }
            guard startResponse(status: status, grpcStatus: grpc, keepAlive: false) else { return }
            client.writeForwarded(block, clientRewrite(HeadRewrite(received: HTTPHeaders())))
        case .block(let block, let status):
            // An HTTP/1.1 client: NIO's head is what goes on.
            upstreamRead(.head(HTTPResponseHead(version: .http2, status: HTTPResponseStatus(statusCode: status),
                                                headers: HTTP2Heads.regular(block))), from: up)
        case .received(let raw) where !client.forwardsHTTP1Heads || (webSocket && raw.status == 101):
            // An HTTP/2 client, or a WebSocket switch: NIO's head is what goes on.
            upstreamRead(.head(raw.nioHead()), from: up)
        case .received(let raw):
            // HTTP/1 on both sides: the upstream's fields go on as they came.
            guard startResponse(status: raw.status, grpcStatus: raw.grpcStatus, keepAlive: raw.keepAlive) else { return }
            client.writeForwarded(raw, clientRewrite(HeadRewrite(received: raw)), status: raw.nioStatus,
                                   minorVersion: head.version.minor)
        case .head(let rh) where webSocket && rh.status == .switchingProtocols:
            // The handshake succeeded: the client hears it now, and the connections are
            // switched to bytes at the response's end (the upstream's codec is still reading).
            status = 101
            responseStarted = true
            switching = true
            if let ep = lastEndpoint { clusterState?.record(ep, .success) }
            var out = clientHead(rh)
            out.headers.replaceOrAdd(name: "connection", value: "Upgrade")
            out.headers.replaceOrAdd(name: "upgrade", value: rh.headers["upgrade"].joined(separator: ", "))
            client.write(.head(out))
            client.write(.end(nil), flush: true)
        case .head(let rh):
            guard startResponse(status: Int(rh.status.code), grpcStatus: rh.headers.first(name: "grpc-status").flatMap { Int($0) },
                                keepAlive: rh.isKeepAlive) else { return }
            var out = clientHead(rh)
            if isGRPC, out.headers.contains(name: "grpc-status") {
                // A trailers-only gRPC response (HEADERS with END_STREAM) cannot cross the
                // HTTP/1-shaped codec as such: its status goes out as trailers instead,
                // which every gRPC client reads the same way.
                var t = HTTPHeaders()
                for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                    for v in out.headers[name] { t.add(name: name, value: v) }
                    out.headers.remove(name: name)
                }
                trailersFromHead = t
            }
            client.write(.head(out))
        case .body(let b):
            touch()
            responseBytes += b.readableBytes
            client.write(.body(.byteBuffer(b)))
        case .end where switching:
            upstream = nil
            up.delegate = nil
            complete()
            // A WebSocket handshake is HTTP/1.1 on both sides (see webSocket, upstreamHTTP2).
            guard let h1 = client as? HTTP1ProxyHandler, let u1 = up.connection else { return }
            WebSocketSplice.switchToBytes(client: h1, upstream: u1, idleTimeout: conn.loop.idleTimeout)
        case .end(let trailers):
            guard responseStarted else { return }
            if let g = trailers?.first(name: "grpc-status").flatMap({ Int($0) }) { grpcStatus = g }
            // Done with the upstream before the client hears the end: on HTTP/2 that
            // write closes the client's stream at once, and a client gone while an
            // upstream is attached would reset the upstream stream (RST_STREAM CANCEL,
            // one per request, which a peer's rapid-reset guard answers by closing the
            // whole connection). An HTTP/2 upstream stream whose request went out whole
            // ends by itself; its response head says HTTP/2, so it never reads as
            // keep-alive.
            let reusable = (up.isStream || upstreamKeepAlive) && sentEnd
            upstream = nil
            if reusable, let c = cluster, let state = clusterState, let key = poolKey {
                conn.loop.pool.release(up, key, cluster: state, policy: c.connectionPool)
            } else {
                up.delegate = nil
                up.close()
            }
            client.write(.end(trailers ?? trailersFromHead), flush: true)
            complete()
            if !keepAlive { client.closeAfterResponse() }
        }
    }

    func upstreamReadComplete(from up: any ExchangeUpstream) {
        if up === upstream { client.flush() }
    }

    func upstreamClosed(_ up: any ExchangeUpstream) {
        guard up === upstream, !finished else { return }
        upstream = nil
        if responseStarted {
            // Reset mid-response: the client cannot be given a whole answer.
            flags.append("UR")
            client.closeClient()
            complete()
        } else {
            attemptEnded(up.refused ? .refusedStream : .reset(requestSent: true))
        }
    }

    func upstreamWritabilityChanged(_ up: any ExchangeUpstream, writable: Bool) {
        guard up === upstream else { return }
        client.pauseReads(!writable)
    }

    /// An upstream's response head arrived: the retry policy's verdict on it, then (unless
    /// it is retried: false) the response is the client's.
    private func startResponse(status code: Int, grpcStatus: Int?, keepAlive: Bool) -> Bool {
        self.grpcStatus = grpcStatus
        if let ep = lastEndpoint { clusterState?.record(ep, code >= 500 ? .status(code) : .success) }
        let action = verdict(.response(status: code, grpcStatus: grpcStatus))
        if case .retry = action {
            // Envoy discards this response and tries again: so do we (the connection goes,
            // its unread body with it).
            abandonAttempt()
            act(action)
            return false
        }
        if case .deliver(let f) = action { flags += f }
        upstreamKeepAlive = keepAlive
        tryTimer?.cancel()
        tryTimer = nil
        responseStarted = true
        status = code
        return true
    }

    /// A draining agent (handing over) ends each HTTP/1 connection after the response it
    /// is writing: the client's next request goes to a new connection, to the new agent.
    private func closingIfDraining() {
        if conn.loop.draining && !client.http2 { keepAlive = false }
    }

    /// What the client is sent of an upstream's response head: its end-to-end fields with
    /// the route's edits.
    private func clientRewrite(_ base: HeadRewrite) -> HeadRewrite {
        closingIfDraining()
        var r = base
        for ops in decision?.responseHeaders ?? [] { apply(ops, to: &r) }
        if let c = setCookie { r.add(name: "set-cookie", value: c) }
        if !keepAlive { r.replaceOrAdd(name: "connection", value: "close") }
        return r
    }

    private func clientHead(_ rh: HTTPResponseHead) -> HTTPResponseHead {
        HTTPResponseHead(version: head.version, status: rh.status, headers: clientRewrite(HeadRewrite(received: rh.headers)).headers())
    }

    // MARK: client timeouts

    /// Bounds what one slow client can hold: a stream with no byte either way for the
    /// stream idle timeout ends, and so does a request whose body is not all in within
    /// the request timeout (when one is set). The timers are the handler's: activity
    /// only moves a deadline (the head counts as the first byte).
    private func armTimeouts() {
        touch()
        if !requestComplete, let limit = conn.loop.requestTimeout { client.setRequestDeadline(.now() + limit) }
    }

    /// A byte went either way: the stream idle deadline moves on.
    private func touch() {
        if let idle = conn.loop.streamIdleTimeout { client.setStreamIdleDeadline(.now() + idle) }
    }

    func streamIdleExpired() {
        if !finished { clientTimeout(body: "stream timeout", flag: "SI") }
    }

    func requestExpired() {
        if !finished && !requestComplete { clientTimeout(body: "request timeout", flag: nil) }
    }

    /// The client took too long: 408 if nothing was answered yet, else the response is
    /// cut; either way the client's connection (or HTTP/2 stream) goes, since what it
    /// still sends belongs to a request that is over.
    private func clientTimeout(body: String, flag: String?) {
        if let flag { flags.append(flag) }
        abandonAttempt()
        if responseStarted {
            client.closeClient()
            complete()
        } else {
            finish(with: LocalReply(status: .requestTimeout, body: body, flags: []))
            client.closeClient()
        }
    }

    // MARK: endings

    private func localReply(_ r: LocalReply) {
        finish(with: r)
    }

    /// Answers the client with a response of the proxy's own. A gRPC client gets it the
    /// gRPC way, as Envoy maps local replies: HTTP 200, the status in grpc-status.
    private func finish(with r: LocalReply) {
        guard !finished else { return }
        if responseStarted {
            client.closeClient()
            complete()
            return
        }
        status = Int(r.status.code)
        flags += r.flags
        if isGRPC {
            var h = HTTPHeaders([("content-type", "application/grpc")])
            var trailers = HTTPHeaders()
            let given = r.headers.first { $0.0 == "grpc-status" }?.1
            trailers.add(name: "grpc-status", value: given ?? String(GRPCStatus.fromHTTP(status)))
            trailers.add(name: "grpc-message", value: r.headers.first { $0.0 == "grpc-message" }?.1 ?? r.body)
            for (k, v) in r.headers where !k.hasPrefix("grpc-") && k != "content-type" { h.add(name: k, value: v) }
            grpcStatus = Int(trailers.first(name: "grpc-status")!)
            status = 200
            client.write(.head(HTTPResponseHead(version: head.version, status: .ok, headers: h)))
            client.write(.end(trailers), flush: true)
            complete()
            return
        }
        var h = HTTPHeaders()
        for (k, v) in r.headers { h.add(name: k, value: v) }
        let body = ByteBuffer(string: r.body)
        h.add(name: "content-length", value: String(body.readableBytes))
        if !r.body.isEmpty { h.add(name: "content-type", value: "text/plain") }
        closingIfDraining()
        if !keepAlive { h.add(name: "connection", value: "close") }
        responseBytes = body.readableBytes
        client.write(.head(HTTPResponseHead(version: head.version, status: r.status, headers: h)))
        if head.method != .HEAD { client.write(.body(.byteBuffer(body))) }
        client.write(.end(nil), flush: true)
        complete()
        if !keepAlive { client.closeAfterResponse() }
    }

    private func complete() {
        account()
        client.exchangeFinished(self)
    }

    /// The request is over: timers stopped, the cluster's counts given back, its record
    /// (metrics, access log, monitor) and span written.
    private func account() {
        finished = true
        endActive()
        client.setStreamIdleDeadline(nil)
        client.setRequestDeadline(nil)
        routeTimer?.cancel()
        tryTimer?.cancel()
        if requestCounted { clusterState?.endRequest() }
        if retryInFlight { clusterState?.endRetry() }
        if let id = waitID { clusterState?.cancelWait(id) }
        requestCounted = false
        retryInFlight = false
        waitID = nil
        held.removeAll()
        let ms = Double((NIODeadline.now() - started).nanoseconds) / 1e6
        let record = RequestRecord(
            start: startTime, peers: conn.peers(destination: lastTarget), method: head.method.rawValue, path: head.uri, authority: head.headers.first(name: "host") ?? "",
            protocolName: isGRPC ? "gRPC" : client.http2 ? "HTTP/2" : "HTTP/1.1", status: status, grpcStatus: grpcStatus, flags: flags, durationMillis: ms, requestBytes: requestBytes,
            responseBytes: responseBytes, upstream: lastEndpointText ?? lastEndpoint?.description, attempts: attempts,
            requestID: requestID, route: decision?.routeName, cluster: clusterState?.name ?? cluster?.key.description)
        conn.loop.observe(.request(record))
        if let trace {
            trace.end(record, workload: conn.inbound?.target.workload ?? conn.source, headers: head.headers)
            self.trace = nil
        }
    }
}
