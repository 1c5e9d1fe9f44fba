import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import WeftConfig

/// The destination end of a connection delivered to a local workload (a tunnel stream,
/// or plaintext steered to the inbound listener), as the proxy sees it.
struct InboundPeer {
    /// The peer's SPIFFE URI, verified in the TLS handshake; nil for plaintext.
    let identity: String?
    /// The client's WorkloadEntry: the one at the Forwarded address, if its identity is
    /// the verified one (an agent cannot claim a workload of another identity).
    let sourceWorkload: WorkloadEntry?
    /// The local workload port the stream is delivered to.
    let target: InboundTarget
    /// How it arrived (what a refusal is counted as).
    let path: InboundPath
}

extension ProxyRuntime {
    /// The agent has identities and a tunnel port.
    var tunnelEnabled: Bool { tls != nil && settings.tunnelPort != 0 }

    /// Counts (by path and kind) and logs (with the detail) a refused inbound connection
    /// or tunnel stream.
    func refuse(_ path: InboundPath, _ kind: TunnelRefusal, _ detail: String, peer: SocketKey) {
        refusals[path]?[kind.rawValue]?.increment()
        refusalLog.info("\(path.rawValue)/\(kind.rawValue)", "\(path.rawValue) from \(peer) refused (\(kind.rawValue)): \(detail)",
                        metadata: ["component": path == .tunnel ? "tunnel" : "inbound"])
    }

    /// The refusal counters, registered at start so every reason reads 0 until it happens:
    /// the tunnel's when there is a tunnel, the inbound listener's when there is one.
    static func refusalCounters(_ registry: PrometheusCollectorRegistry, tunnel: Bool, plaintext: Bool) -> [InboundPath: [String: Counter]] {
        func counters(_ name: String, _ help: String, _ kinds: [TunnelRefusal]) -> [String: Counter] {
            Dictionary(uniqueKeysWithValues: kinds.map { ($0.rawValue, registry.makeCounter(name: name, labels: [("reason", $0.rawValue)], help: help)) })
        }
        var out: [InboundPath: [String: Counter]] = [:]
        if tunnel {
            out[.tunnel] = counters("weft_tunnel_refused_total", "Tunnel connections and CONNECT streams the destination agent refused, by reason.",
                                    TunnelRefusal.allCases)
        }
        if plaintext {
            out[.plaintext] = counters("weft_plaintext_refused_total",
                                       "Plaintext connections steered to the inbound listener that the agent refused, by reason.",
                                       [.notLocalWorkload, .denied])
        }
        return out
    }

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
