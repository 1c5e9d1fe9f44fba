import NIOHPACK
import WeftConfig

/// The destination end of a tunnel requests connection (ALPN weft-h2), where each stream
/// is one HTTP request naming the workload port it is for: which connection context a
/// stream's exchange runs in. A target is checked as a CONNECT stream's is
/// (ProxyRuntime.tunnelDestination); the context is kept per target while the tables stay
/// the same revision, so a stream costs a scan of its fields and a lookup.
final class TunnelRequestTargets {
    private let runtime: ProxyRuntime
    private let peer: PeerIdentity
    private let remote: SocketKey
    let loop: LoopState
    private var known: [String: (source: String?, generation: UInt64, conn: ConnectionContext)] = [:]

    init(runtime: ProxyRuntime, peer: PeerIdentity, remote: SocketKey, loop: LoopState) {
        self.runtime = runtime
        self.peer = peer
        self.remote = remote
        self.loop = loop
    }

    /// The context of the request whose header block is `block`, or why it is refused
    /// (counted by the caller). Each of the two fields may appear once: a second would be
    /// one the source agent did not write (its exchanges drop a client's own).
    func context(_ block: HPACKHeaders) -> Result<ConnectionContext, TunnelStreamRefusal> {
        var target: String?, source: String?, repeated = false
        for (name, value, _) in block where name.utf8.first == UInt8(ascii: "w") {
            if name == TunnelHTTP2.targetField {
                repeated = repeated || target != nil
                target = value
            } else if name == TunnelHTTP2.sourceField {
                repeated = repeated || source != nil
                source = value
            }
        }
        guard let target, !repeated else {
            return .failure(.init(400, .badRequest, "a request stream must name its target (\(TunnelHTTP2.targetField)) and source once"))
        }
        let generation = runtime.tables.withLockedValue { $0.generation }
        if let k = known[target], k.generation == generation, k.source == source { return .success(k.conn) }
        let result = runtime.tunnelDestination(authority: target, source: source.flatMap { IPAddress($0) }, peer: peer, remote: remote,
                                               loop: loop, http: true)
        if case .success(let conn) = result {
            // A peer names only its node's workload ports; a bound on what it can make
            // this hold all the same.
            if known.count >= 256 { known.removeAll() }
            known[target] = (source, generation, conn)
        }
        return result
    }
}
