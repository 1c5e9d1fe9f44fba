// weft-floor: the floor under weft's proxy, for scripts/bench l7. The smallest forwarders
// one can write on SwiftNIO — the runtime weft's proxy is built on — with none of weft's
// work (no routing table, no policy, no telemetry, no limits, no timeouts), so the bench
// can split weft's gap to HAProxy into "the runtime" and "weft's own work".
//
//   weft-floor tcp  LISTEN=UPSTREAM ...   bytes both ways, one upstream connection per
//                                         client connection (the runtime's floor)
//   weft-floor http LISTEN=UPSTREAM ...   HTTP parsed with NIO's codecs (NIOHTTP1, and
//                                         NIOHTTP2 for a LISTEN ending in /h2: prior-
//                                         knowledge h2c, each stream an HTTP/1 exchange),
//                                         one header set (the bench route's x-route),
//                                         HTTP/1.1 upstream from an idle pool per event
//                                         loop — what weft's L7 path does, and nothing else
//
// LISTEN and UPSTREAM are IPv4 ADDRESS:PORT. Runs until killed; `--threads N` event loops
// (default 2, this machine's cores, as every proxy in the bench gets). This is a
// benchmark fixture, not a proxy: it trusts its peers and bounds nothing.
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    fputs("weft-floor: \(message)\n", stderr)
    exit(2)
}

var args = Array(CommandLine.arguments.dropFirst())
var threads = 2
if let i = args.firstIndex(of: "--threads") {
    guard i + 1 < args.count, let n = Int(args[i + 1]), n > 0 else { fail("--threads needs a positive number") }
    threads = n
    args.removeSubrange(i...(i + 1))
}
guard let mode = args.first, mode == "tcp" || mode == "http", args.count >= 2 else {
    fail("usage: weft-floor tcp|http LISTEN=UPSTREAM ... [--threads N]")
}

func address(_ s: Substring) -> SocketAddress {
    guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]),
          let a = try? SocketAddress(ipAddress: String(s[..<colon]), port: port)
    else { fail("\(s) is not ADDRESS:PORT") }
    return a
}

// MARK: - tcp: bytes both ways

/// One side of a spliced pair: what it reads goes to the other side, flushed once per
/// read burst. No backpressure: the bench's exchanges are small request/response pairs.
final class Splice: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var peer: Channel?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        peer?.write(unwrapInboundIn(data), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        peer?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer?.close(promise: nil)
        peer = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// The client's side: dials the upstream when the client connects (the client channel
/// does not read until then), and splices the two.
final class ClientSplice: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let upstream: SocketAddress
    let splice = Splice()

    init(upstream: SocketAddress) { self.upstream = upstream }

    func channelActive(context: ChannelHandlerContext) {
        let client = context.channel
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { up in
                let back = Splice()
                back.peer = client
                return up.pipeline.addHandler(back)
            }
            .connect(to: upstream)
            .whenComplete { result in
                switch result {
                case .success(let up):
                    self.splice.peer = up
                    client.setOption(.autoRead, value: true).whenComplete { _ in }
                case .failure:
                    client.close(promise: nil)
                }
            }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { splice.channelRead(context: context, data: data) }
    func channelReadComplete(context: ChannelHandlerContext) { splice.channelReadComplete(context: context) }
    func channelInactive(context: ChannelHandlerContext) { splice.channelInactive(context: context) }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

func serveTCP(group: EventLoopGroup, listen: SocketAddress, upstream: SocketAddress) throws -> Channel {
    try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.autoRead, value: false)
        .childChannelInitializer { client in client.pipeline.addHandler(ClientSplice(upstream: upstream)) }
        .bind(to: listen).wait()
}

// MARK: - http: NIO's codecs, a per-loop upstream pool

/// Idle HTTP/1.1 upstream connections of one event loop (used only on that loop, hence
/// unchecked).
final class UpstreamPool: @unchecked Sendable {
    let loop: EventLoop
    let upstream: SocketAddress
    var idle: [Channel] = []

    init(loop: EventLoop, upstream: SocketAddress) {
        self.loop = loop
        self.upstream = upstream
    }

    func acquire() -> EventLoopFuture<UpstreamSide> {
        while let ch = idle.popLast() {
            if ch.isActive, let side = try? ch.pipeline.syncOperations.handler(type: UpstreamSide.self) {
                return loop.makeSucceededFuture(side)
            }
        }
        let side = UpstreamSide(pool: self)
        return ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.pipeline.addHTTPClientHandlers().flatMap { ch.pipeline.addHandler(side) }
            }
            .connect(to: upstream)
            .map { _ in side }
    }
}

/// The upstream end of one exchange at a time: response parts go to the client side that
/// holds it; after the response's end it goes back to its pool.
final class UpstreamSide: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let pool: UpstreamPool
    var channel: Channel?
    var client: ClientSide?

    init(pool: UpstreamPool) { self.pool = pool }

    func handlerAdded(context: ChannelHandlerContext) { channel = context.channel }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        client?.response(part)
        if case .end = part {
            client = nil
            pool.idle.append(context.channel)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        client?.upstreamGone()
        client = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// The client end (an HTTP/1.1 connection, or one HTTP/2 stream behind NIO's HTTP/1
/// translation): each request goes to an upstream from the pool, with x-route set.
final class ClientSide: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let pool: UpstreamPool
    /// The client is an HTTP/2 stream: the upstream's connection-specific headers are
    /// dropped from the response (they are a protocol error in HTTP/2, RFC 9113 §8.2.2).
    let h2: Bool
    var context: ChannelHandlerContext?
    var upstream: UpstreamSide?
    /// Request parts that came before the upstream connection did.
    var pending: [HTTPClientRequestPart] = []
    var connecting = false

    init(pool: UpstreamPool, h2: Bool) {
        self.pool = pool
        self.h2 = h2
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(var head):
            head.headers.replaceOrAdd(name: "x-route", value: "bench")
            head.version = .http1_1 // an HTTP/2 stream's request, too, goes out as HTTP/1.1
            forward(.head(head))
            if upstream == nil && !connecting {
                connecting = true
                pool.acquire().whenComplete { result in
                    self.connecting = false
                    switch result {
                    case .success(let up):
                        up.client = self
                        self.upstream = up
                        for part in self.pending { up.channel?.write(part, promise: nil) }
                        self.pending.removeAll()
                        up.channel?.flush()
                    case .failure:
                        self.context?.close(promise: nil)
                    }
                }
            }
        case .body(let b):
            forward(.body(.byteBuffer(b)))
        case .end(let t):
            forward(.end(t))
            upstream?.channel?.flush()
        }
    }

    private func forward(_ part: HTTPClientRequestPart) {
        if let up = upstream { up.channel?.write(part, promise: nil) } else { pending.append(part) }
    }

    func response(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        switch part {
        case .head(var h):
            if h2 { for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] { h.headers.remove(name: name) } }
            context.write(wrapOutboundOut(.head(h)), promise: nil)
        case .body(let b): context.write(wrapOutboundOut(.body(.byteBuffer(b))), promise: nil)
        case .end(let t):
            // Let go of the upstream first: on HTTP/2 the end closes the stream, and its
            // channelInactive must not take the (reusable) upstream down with it.
            upstream = nil
            context.writeAndFlush(wrapOutboundOut(.end(t)), promise: nil)
        }
    }

    func upstreamGone() {
        upstream = nil
        context?.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // An exchange cut short leaves its upstream mid-response: not reusable.
        if let up = upstream { up.client = nil; up.channel?.close(promise: nil) }
        upstream = nil
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

func serveHTTP(group: EventLoopGroup, listen: SocketAddress, h2: Bool, pools: [ObjectIdentifier: UpstreamPool]) throws -> Channel {
    try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { ch in
            let pool = pools[ObjectIdentifier(ch.eventLoop)]!
            if !h2 {
                return ch.pipeline.configureHTTPServerPipeline().flatMap { ch.pipeline.addHandler(ClientSide(pool: pool, h2: false)) }
            }
            return ch.configureHTTP2Pipeline(mode: .server) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandlers([HTTP2FramePayloadToHTTP1ServerCodec(), ClientSide(pool: pool, h2: true)])
                }
            }.map { _ in }
        }
        .bind(to: listen).wait()
}

// MARK: - main

let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
var servers: [Channel] = []
for spec in args.dropFirst() {
    let parts = spec.split(separator: "=", maxSplits: 1)
    guard parts.count == 2 else { fail("\(spec) is not LISTEN=UPSTREAM") }
    var listenSpec = parts[0]
    let h2 = listenSpec.hasSuffix("/h2")
    if h2 {
        guard mode == "http" else { fail("/h2 is for http mode (tcp mode forwards any protocol as bytes)") }
        listenSpec = listenSpec.dropLast(3)
    }
    let listen = address(listenSpec), upstream = address(parts[1])
    do {
        if mode == "tcp" {
            servers.append(try serveTCP(group: group, listen: listen, upstream: upstream))
        } else {
            var pools: [ObjectIdentifier: UpstreamPool] = [:]
            for loop in group.makeIterator() { pools[ObjectIdentifier(loop)] = UpstreamPool(loop: loop, upstream: upstream) }
            servers.append(try serveHTTP(group: group, listen: listen, h2: h2, pools: pools))
        }
    } catch {
        fail("cannot listen on \(listenSpec): \(error)")
    }
}
print("weft-floor: \(mode) forwarding on \(servers.count) listener(s), \(threads) threads")
fflush(stdout)
try servers[0].closeFuture.wait()
