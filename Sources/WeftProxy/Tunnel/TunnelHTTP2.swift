import NIOHTTP2

/// The HTTP/2 settings of the node-to-node tunnel, both ends. Each stream carries one
/// proxied connection, bulk TCP included: with HTTP/2's default 64 KiB windows and NIO's
/// 8 KiB stream write buffer, a stream stalls on flow control and writability long before
/// the link or the CPU is busy (iperf3 through the pair read 0.2× the HAProxy TCP-mode
/// pair; `scripts/bench mtls`). What a peer can make an agent hold stays bounded: a
/// stream's receive window (`streamWindow`) times the streams it may have open
/// (`maxStreams`), and peers are other nodes' agents that passed mTLS.
///
/// NIO's reset-rate guard (200 RST_STREAM in 30 s fail the connection: the Rapid Reset
/// defence) is raised here: on the tunnel a stream reset is how a proxied connection that
/// was reset or cut ends, and a TCP port with a connection per request sends one per
/// connection — at 200 the guard closed the whole tunnel, failing every other stream on it
/// (4 % of wrk's connections through the pair read a reset, `scripts/bench mtls`). What a
/// peer agent can open at once stays bounded by `maxStreams`; client-facing HTTP/2 keeps
/// NIO's limits (ProxyRuntime.addHTTP2).
///
/// A tunnel connection is one of two kinds, told apart by ALPN: `h2` carries CONNECT
/// streams, one per proxied TCP connection (and WebSocket); `weft-h2` carries HTTP
/// requests, each its own stream, with the workload port it is for and the original
/// client in two fields of its header block (Linkerd's shape between proxies): the
/// destination serves each stream as a request, with no CONNECT stream and no HTTP/1
/// codec in between.
enum TunnelHTTP2 {
    static let connectALPN = "h2"
    static let requestsALPN = "weft-h2"
    /// The request stream's target workload port (`addr:port`, `[v6]:port`).
    static let targetField = "weft-target"
    /// The request stream's original client address (believed only from an agent that
    /// may speak for it, as Forwarded on a CONNECT stream).
    static let sourceField = "weft-source"
    static let streamWindow = 1 << 20
    static let connectionWindow = 16 << 20
    static let maxStreams = 1000

    /// `server`: the accepting end also caps concurrent streams and header size.
    static func connection(server: Bool) -> NIOHTTP2Handler.ConnectionConfiguration {
        var c = NIOHTTP2Handler.ConnectionConfiguration()
        c.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: server ? maxStreams : 100),
            // A request head the agent took from a client (up to 60 KiB) must fit whole,
            // with the tunnel's fields: a smaller limit would make the peer's NIO fail the
            // whole connection, shared by every client of the pair, on one large head.
            HTTP2Setting(parameter: .maxHeaderListSize, value: ProxyRuntime.maxHeaderBytes + 4 * 1024),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
        ]
        c.targetWindowSize = connectionWindow
        // Streams reset by one end (a proxied connection cut, a request cancelled) while
        // the other's frames are on the way: thousands a second on a busy pair.
        c.maximumRecentlyResetStreams = CloseOnError.rememberedResets
        return c
    }

    static var stream: NIOHTTP2Handler.StreamConfiguration {
        var s = NIOHTTP2Handler.StreamConfiguration()
        s.targetWindowSize = streamWindow
        // Writability follows the window: a stream whose peer can take a window's worth
        // is not held to 8 KiB in flight.
        s.outboundBufferSizeHighWatermark = 256 * 1024
        s.outboundBufferSizeLowWatermark = 128 * 1024
        s.streamResetFrameRateLimit.maximumCount = 100_000 // in 30 s: ~3,300 connections/s ending in a reset
        return s
    }
}
