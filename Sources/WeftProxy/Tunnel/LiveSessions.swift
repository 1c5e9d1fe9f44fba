import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import WeftConfig

/// What the proxy let in that outlives the decision letting it in: TCP connections to
/// this node's workloads, authorized once when they opened, and mTLS tunnel connections,
/// verified once in their handshake. Whenever policy, workloads or trust change, each is
/// judged again as if it arrived now, and what would now be refused ends — so a DENY
/// applied, a root dropped from the bundle or a WorkloadEntry deleted reaches clients that
/// keep their connections open. A TCP connection now denied is closed at once. A tunnel
/// whose peer no longer verifies is drained: it takes no new stream (new ones go over a
/// new connection, verified under the new trust), and what it still carries is cut after
/// `grace` — a CA rotation then breaks no request in flight, and nothing outlives it for
/// long. (HTTP needs none of this: every request is authorized against the current
/// revision when it arrives.)
final class LiveSessions: Sendable {
    /// A TCP connection to a local workload port: the upstream channel to the workload
    /// (closing it ends the splice), and what it was authorized as.
    struct Stream {
        let channel: Channel
        let target: SocketKey
        let request: AuthzRequest
        let path: InboundPath
        let client: SocketKey
    }

    /// A tunnel connection and its verified peer; `accept` is the check its handshake
    /// passed (the identity may speak for that node), asked again with the current tables;
    /// `drain` stops it taking new streams (run on its event loop).
    struct Tunnel {
        let channel: Channel
        let peer: PeerIdentity
        let accept: @Sendable (_ identity: String, _ node: String) -> String?
        let drain: @Sendable () -> Void
        let describe: String
    }

    private let streams = NIOLockedValueBox<[ObjectIdentifier: Stream]>([:])
    private let tunnels = NIOLockedValueBox<[ObjectIdentifier: Tunnel]>([:])
    private let logger: Logger
    /// How long a drained tunnel keeps what it carries.
    let grace: TimeAmount

    init(logger: Logger, grace: TimeAmount = .seconds(30)) {
        self.logger = logger
        self.grace = grace
    }

    func add(_ s: Stream) {
        let key = ObjectIdentifier(s.channel)
        streams.withLockedValue { $0[key] = s }
        s.channel.closeFuture.whenComplete { [streams] _ in _ = streams.withLockedValue { $0.removeValue(forKey: key) } }
    }

    func add(_ t: Tunnel) {
        let key = ObjectIdentifier(t.channel)
        tunnels.withLockedValue { $0[key] = t }
        t.channel.closeFuture.whenComplete { [tunnels] _ in _ = tunnels.withLockedValue { $0.removeValue(forKey: key) } }
    }

    /// Closes the TCP connections `tables` would not let in now: their workload port is
    /// gone, or its policies deny them. `refused` counts each.
    func recheckStreams(_ tables: ProxyTables, refused: (Stream, TunnelRefusal, String) -> Void) {
        for s in streams.withLockedValue({ Array($0.values) }) {
            let verdict: (TunnelRefusal, String)?
            if let target = tables.inboundTargets[s.target] {
                let decision = target.authorization.evaluate(s.request)
                verdict = decision.allowed ? nil : (.denied, "open connection to \(s.target) closed: \(decision)")
            } else {
                verdict = (.notLocalWorkload, "open connection closed: \(s.target) is no longer a workload port of this node")
            }
            if let (kind, reason) = verdict {
                refused(s, kind, reason)
                s.channel.close(promise: nil)
            }
        }
    }

    /// Verifies every tunnel connection's peer again (chain against the current trust
    /// bundle, identity against the current workloads of its node) and drains those that
    /// fail.
    func recheckTunnels(_ identities: TunnelIdentities) {
        let all = tunnels.withLockedValue { Array($0.values) }
        guard !all.isEmpty else { return }
        let logger = logger
        Task {
            for t in all {
                guard let chain = t.peer.chain, t.peer.value != nil else { continue }
                let reason: String?
                do {
                    let v = try await identities.verify(chainDER: chain)
                    reason = v.node.map { t.accept(v.identity, $0) } ?? "\(v.identity) is issued by a CA bound to no node"
                } catch {
                    reason = "\(error)"
                }
                if let reason {
                    logger.warning("\(t.describe) draining: its peer no longer verifies: \(reason)", metadata: ["component": "tunnel"])
                    end(t, after: grace, why: "its peer no longer verifies")
                }
            }
        }
    }

    /// Drains `t` now and closes it, with whatever it still carries, `after` from now (at
    /// once for nothing).
    func end(_ t: Tunnel, after: TimeAmount, why: String) {
        let ch = t.channel, logger = logger
        ch.eventLoop.execute {
            guard ch.isActive else { return }
            if after <= .zero {
                logger.info("\(t.describe) closed: \(why)", metadata: ["component": "tunnel"])
                ch.close(promise: nil)
                return
            }
            t.drain()
            let task = ch.eventLoop.scheduleTask(in: after) {
                guard ch.isActive else { return }
                logger.info("\(t.describe) closed: \(why)", metadata: ["component": "tunnel"])
                ch.close(promise: nil)
            }
            ch.closeFuture.whenComplete { _ in task.cancel() }
        }
    }

    /// A tunnel lives no longer than its peer's certificate chain: closed at `notAfter`.
    /// The side that opened it (`drainFirst`) stops putting new streams on it `grace`
    /// before (at most half of what is left); the accepting side just closes — the peer
    /// renews its own certificate at half life and has moved to a new connection long
    /// before, and a GOAWAY from here would only refuse streams already on their way.
    func expire(_ t: Tunnel, at notAfter: Date, drainFirst: Bool) {
        let left = TimeAmount.milliseconds(Int64(max(0, notAfter.timeIntervalSinceNow) * 1000))
        let drainIn = drainFirst ? left - min(grace, TimeAmount.nanoseconds(left.nanoseconds / 2)) : left
        let ch = t.channel
        ch.eventLoop.execute { [self] in
            let task = ch.eventLoop.scheduleTask(in: drainIn) { [self] in end(t, after: left - drainIn, why: "the peer's certificate expired") }
            ch.closeFuture.whenComplete { _ in task.cancel() }
        }
    }
}
