import NIOCore
import NIOHTTP1
import WeftConfig

/// A shadow copy of a request (VirtualService mirror): sent to one endpoint of the mirror
/// cluster, its response read and thrown away. Fire and forget: it never waits for a
/// connection slot, its failures are not seen by anyone, and it gives up after
/// `maxDuration`. It keeps itself alive through its timer until it is done.
final class MirrorRequest: ExchangeUpstreamDelegate {
    static let maxDuration = TimeAmount.seconds(30)

    private let conn: ConnectionContext
    private let cluster: Cluster
    private let head: HTTPRequestHead
    private let body: [ByteBuffer]
    private var state: ClusterState?
    private var upstream: UpstreamHTTP1Handler?
    private var poolKey: PoolKey?
    private var timer: Scheduled<Void>?
    private var done = false

    init(conn: ConnectionContext, cluster: Cluster, head: HTTPRequestHead, body: [ByteBuffer]) {
        self.conn = conn
        self.cluster = cluster
        self.head = head
        self.body = body
    }

    func start(on loop: EventLoop) {
        let state = conn.clusters.state(cluster)
        guard state.startRequest() else { return }
        self.state = state
        guard let ep = conn.loop.picker(cluster, exclude: state.ejected(), hash: nil, state: state),
              case let route = conn.route(to: ep), mayReach(ep, route),
              case let key = PoolKey(cluster: cluster.key, endpoint: ep.socket, route: route),
              let future = conn.loop.pool.acquire(key, cluster: state, on: loop,
                                                  connectTimeout: cluster.connectionPool?.connectTimeout?.timeAmount) else {
            state.endRequest()
            return
        }
        poolKey = key
        timer = loop.assumeIsolated().scheduleTask(in: Self.maxDuration) { self.finish(reuse: false) }
        future.assumeIsolated().whenComplete { result in
            guard case .success(let up) = result, !self.done else {
                self.finish(reuse: false)
                return
            }
            self.upstream = up
            up.delegate = self
            up.requests += 1
            up.send(.head(self.head))
            for b in self.body { up.send(.body(.byteBuffer(b))) }
            up.send(.end(nil), flush: true)
        }
    }

    /// A shadow toward one of this node's workload ports in plaintext passes its inbound
    /// rules like any other plaintext request (see ConnectionContext.localPlaintextTarget).
    private func mayReach(_ ep: Endpoint, _ route: UpstreamRoute) -> Bool {
        guard let target = conn.localPlaintextTarget(ep, route: route) else { return true }
        guard let (path, _) = PathNormalizer.normalize(head.uri) else { return false }
        let http = AuthzRequest.HTTP(host: head.headers.first(name: "host") ?? "", method: head.method.rawValue, path: path,
                                     headers: head.headers.map { ($0.name, $0.value) })
        return conn.authorizeLocalPlaintext(target, endpoint: ep.socket, http: http) == nil
    }

    private func finish(reuse: Bool) {
        guard !done else { return }
        done = true
        timer?.cancel()
        state?.endRequest()
        if let up = upstream, let key = poolKey, let state {
            if reuse {
                conn.loop.pool.release(up, key, cluster: state, policy: cluster.connectionPool)
            } else {
                up.delegate = nil
                up.close()
            }
        }
        upstream = nil
    }

    private var keepAlive = false

    func upstreamRead(_ part: HTTP1ClientCodec.ResponsePart, from conn: any ExchangeUpstream) {
        switch part {
        case .received(let h): keepAlive = h.keepAlive
        case .head(let h): keepAlive = h.isKeepAlive
        case .block: keepAlive = false // mirrors go over HTTP/1.1; never so
        case .body: break
        case .end: finish(reuse: keepAlive)
        }
    }

    func upstreamReadComplete(from conn: any ExchangeUpstream) {}
    func upstreamClosed(_ conn: any ExchangeUpstream) { finish(reuse: false) }
    func upstreamWritabilityChanged(_ conn: any ExchangeUpstream, writable: Bool) {}
}
