import Logging
import NIOCore
import WeftConfig

/// The plaintext inbound listener: connections to this node's workloads that TC ingress
/// steered here (bpf_sk_assign) because a policy governs their port. Each is authorized
/// like a tunnel stream with no peer identity (principals never match), then delivered.
public final class PlaintextListener: Sendable {
    private let runtime: ProxyRuntime

    public init(runtime: ProxyRuntime) {
        self.runtime = runtime
    }

    /// Listens for plaintext that the kernel steered here (bpf_sk_assign from TC ingress,
    /// Settings.inboundPort on every address): the accepted socket's local address is the
    /// workload port the client dialed. Returns the listeners' descriptors (IPv6 or not),
    /// which the kernel is given as the only sockets it may steer into.
    @discardableResult
    public func start() throws -> [(v6: Bool, fd: CInt)] {
        let port = runtime.settings.inboundPort
        guard port != 0 else { return [] }
        let bound = try runtime.listen(hosts: ("0.0.0.0", "::"), port: port, flag: "--inbound-port", halfClose: true, networkFacing: true,
                                       v6Missing: "plaintext to IPv6 workloads under policy is refused") { [self] ch in try accepted(ch) }
        runtime.channels.withLockedValue { $0 += bound.map(\.channel) }
        runtime.logger.info("plaintext inbound listening on port \(port)", metadata: ["component": "inbound"])
        return bound.map { ($0.v6, $0.fd) }
    }

    /// Plaintext for a local workload port: authorized like the tunnel's streams, with no
    /// peer identity (principals never match), then delivered.
    private func accepted(_ ch: Channel) throws {
        guard let local = ch.localAddress.flatMap(SocketKey.init), let remote = ch.remoteAddress.flatMap(SocketKey.init) else {
            throw ProxyError("inbound socket without addresses")
        }
        let tables = runtime.tables.withLockedValue { $0 }
        guard let target = tables.inboundTargets[local] else {
            runtime.refuse(.plaintext, .notLocalWorkload, "\(local) is not a workload port of this node that a service names", peer: remote)
            throw ProxyError("not a local workload port")
        }
        guard let loop = runtime.loops[ObjectIdentifier(ch.eventLoop)]?.value else { throw ProxyError("unknown event loop") }
        let peer = InboundPeer(identity: nil, sourceWorkload: nil, target: target, path: .plaintext)
        if let denied = runtime.authorizeTCP(peer, client: remote.address, destination: local, loop: loop) {
            runtime.refuse(.plaintext, .denied, "plaintext to \(local): \(denied)", peer: remote)
            throw ProxyError("denied")
        }
        try runtime.serve(runtime.inboundContext(peer, client: remote.address, destination: local, tables: tables, loop: loop), ch)
    }
}
