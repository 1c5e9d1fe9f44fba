import Logging
import NIOCore
import WeftConfig

/// The outbound listener (DESIGN.md :15001): accepts the connections the kernel captured,
/// recovers each one's original destination and source workload from the kernel's record,
/// and has the runtime serve it — HTTP with routing and resilience, anything else as
/// opaque TCP.
public final class OutboundListener: Sendable {
    private let runtime: ProxyRuntime
    private let origin: @Sendable (SocketKey) -> ConnectionOrigin?

    /// `origin` looks up (and consumes) the kernel's record for a client address.
    public init(runtime: ProxyRuntime, origin: @escaping @Sendable (SocketKey) -> ConnectionOrigin?) {
        self.runtime = runtime
        self.origin = origin
    }

    /// Binds 127.0.0.1 and ::1 (the addresses the kernel redirects to). IPv4 must work;
    /// without IPv6 on loopback there can be no IPv6 client to capture, so that only warns
    /// (a port another process holds does not).
    public func start() throws {
        let port = runtime.settings.port
        let bound = try runtime.listen(hosts: ("127.0.0.1", "::1"), port: port, flag: "--proxy-port", halfClose: true,
                                       v6Missing: "IPv6 services that need L7 will refuse connections") { [self] ch in try accepted(ch) }
        runtime.channels.withLockedValue { $0 += bound.map(\.channel) }
        runtime.logger.info("outbound proxy listening on port \(port)", metadata: ["component": "proxy", "listeners": "\(bound.count)"])
    }

    /// Sets up an accepted connection (on its event loop).
    private func accepted(_ ch: Channel) throws {
        guard let remote = ch.remoteAddress, let client = SocketKey(remote) else { throw ProxyError("accepted socket without a peer address") }
        let id = runtime.nextConnectionID()
        guard let origin = origin(client) else {
            // Not a connection weft captured (someone dialed the listener directly): there
            // is no destination to honour, so there is nothing to proxy.
            runtime.logger.debug("refusing a connection from \(client) that the kernel did not capture",
                                 metadata: ["component": "proxy", "conn_id": "\(id)"])
            throw ProxyError("not captured")
        }
        let t = runtime.tables.withLockedValue { $0 }
        guard let listener = t.listeners[origin.destination] else {
            runtime.refusalLog.warning("no-route", "captured connection to \(origin.destination) has no proxy route in the current revision; closing",
                                       metadata: ["component": "proxy", "conn_id": "\(id)"])
            throw ProxyError("no listener")
        }
        guard let loop = runtime.loops[ObjectIdentifier(ch.eventLoop)]?.value else { throw ProxyError("unknown event loop") }
        let conn = ConnectionContext(id: id, client: client, origin: origin, listener: listener,
                                     source: t.workloads[origin.cgroupID], tables: t, loop: loop, clusters: runtime.clusters,
                                     live: runtime.tables, sessions: runtime.sessions)
        try runtime.serve(conn, ch)
    }
}
