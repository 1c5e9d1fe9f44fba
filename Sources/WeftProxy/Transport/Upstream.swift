import NIOCore
import NIOPosix
import WeftConfig
#if canImport(Glibc)
import Glibc
#endif

/// How the proxy opens upstream connections.
struct UpstreamSettings: Sendable {
    /// SO_MARK the kernel recognises as the agent's (never captured); 0 = none.
    var mark: UInt32
    /// Istio's default connectTimeout when a DestinationRule sets none.
    static let defaultConnectTimeout = TimeAmount.seconds(10)

    /// A TCP connection to `endpoint` on `loop` (the client's loop: no thread hop), not
    /// reading until the caller has installed its handlers and turned autoRead on.
    /// `halfClose`: a FIN from the upstream is passed on (opaque TCP) instead of closing
    /// (HTTP, where a pooled connection the server finished with must not be reused).
    func connect(_ endpoint: SocketKey, on loop: EventLoop, timeout: TimeAmount?, halfClose: Bool,
                 initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void> = { $0.eventLoop.makeSucceededVoidFuture() })
        -> EventLoopFuture<Channel> {
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: endpoint.address.description, port: Int(endpoint.port))
        } catch {
            return loop.makeFailedFuture(error)
        }
        // An event loop NIOPosix cannot open sockets on (an embedded one, in tests and
        // fuzzing) fails the connect instead of trapping.
        guard let plain = ClientBootstrap(validatingGroup: loop) else {
            return loop.makeFailedFuture(ProxyError("cannot open a socket on this event loop"))
        }
        var bootstrap = plain
            .connectTimeout(timeout ?? Self.defaultConnectTimeout)
            .channelOption(.allowRemoteHalfClosure, value: halfClose)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .channelInitializer(initializer)
        if mark != 0 {
            bootstrap = bootstrap.channelOption(ChannelOptions.Types.SocketOption(level: .socket, name: .init(rawValue: SO_MARK)), value: SocketOptionValue(Int32(bitPattern: mark)))
        }
        return bootstrap.connect(to: address)
    }
}

/// How one upstream connection is made.
enum UpstreamRoute: Hashable {
    /// Plain TCP to the endpoint.
    case direct
    /// A CONNECT stream through the mTLS tunnel to the endpoint's node.
    case tunnel(TunnelKey)
    /// Not at all, for the reason given: tls ISTIO_MUTUAL to an endpoint no agent serves,
    /// or plaintext toward a STRICT workload port.
    case refused(String)
}

/// Opens the upstream connections of one event loop.
final class Dialer {
    let settings: UpstreamSettings
    let tunnels: TunnelPool?

    init(settings: UpstreamSettings, tunnels: TunnelPool?) {
        self.settings = settings
        self.tunnels = tunnels
    }

    /// A connection to `endpoint` by `route`, not reading until the caller turns autoRead on.
    func dial(_ endpoint: SocketKey, route: UpstreamRoute, on loop: EventLoop, timeout: TimeAmount?, halfClose: Bool)
        -> EventLoopFuture<Channel> {
        switch route {
        case .direct:
            return settings.connect(endpoint, on: loop, timeout: timeout, halfClose: halfClose)
        case .tunnel(let key):
            guard let tunnels else { return loop.makeFailedFuture(ProxyError("no mTLS tunnel in this agent")) }
            return tunnels.open(key, via: endpoint.address, target: endpoint, on: loop, timeout: timeout)
        case .refused(let reason):
            return loop.makeFailedFuture(ProxyError(reason))
        }
    }
}

extension SocketKey {
    /// The key of a NIO socket address (nil for Unix sockets).
    init?(_ address: SocketAddress) {
        guard let ip = address.ipAddress, let port = address.port, let parsed = IPAddress(ip) else { return nil }
        self.init(parsed, UInt16(port))
    }
}

extension IstioDuration {
    /// As a NIO time amount.
    var timeAmount: TimeAmount { .nanoseconds(nanoseconds) }
}
