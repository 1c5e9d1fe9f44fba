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
//   weft-floor h2 LISTEN=UPSTREAM ...     HTTP/2 in and out at the frame level (NIOHTTP2's
//                                         connection handler, no stream channels, no
//                                         HTTP/1 translation): each client stream opened
//                                         as a stream of the loop's one upstream HTTP/2
//                                         connection, x-route added — the floor for an
//                                         HTTP/2 path that never leaves HTTP/2
//   weft-floor tunnel-a LISTEN=PEER ... --tls DIR
//   weft-floor tunnel-b LISTEN=UPSTREAM ... --tls DIR
//                                         the mTLS pair's floor, for scripts/bench mtls:
//                                         tunnel-a carries each client connection as an
//                                         HTTP/2 CONNECT stream (NIO's stream channels) on
//                                         its loop's TLS 1.3 connection to PEER, with the
//                                         client certificate; tunnel-b verifies it and
//                                         splices each stream to a new connection to
//                                         UPSTREAM — the bytes-only path weft's tunnel takes
//                                         for HTTP/1.1 (with weft's HTTP/2 windows), and
//                                         no HTTP parsing at all. DIR holds ca.pem,
//                                         client.crt/.key and server.crt/.key (PEM)
//
// LISTEN and UPSTREAM are IPv4 ADDRESS:PORT. Runs until killed; `--threads N` event loops
// (default 2, this machine's cores, as every proxy in the bench gets). This is a
// benchmark fixture, not a proxy: it trusts its peers and bounds nothing.
import NIOCore
import NIOHTTP1
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL

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
var tlsDir: String?
if let i = args.firstIndex(of: "--tls") {
    guard i + 1 < args.count else { fail("--tls needs a directory") }
    tlsDir = args[i + 1]
    args.removeSubrange(i...(i + 1))
}
let modes = ["tcp", "http", "h2", "tunnel-a", "tunnel-b"]
guard let mode = args.first, modes.contains(mode), args.count >= 2 else {
    fail("usage: weft-floor tcp|http|h2|tunnel-a|tunnel-b LISTEN=UPSTREAM ... [--threads N] [--tls DIR]")
}
if mode.hasPrefix("tunnel"), tlsDir == nil { fail("\(mode) needs --tls DIR") }

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

// MARK: - h2: HTTP/2 frames forwarded, no stream channels, no HTTP/1 translation

/// Receive windows for one HTTP/2 connection: what a peer sent is given back (stream and
/// connection) once half a window's worth has come in. A fixture: it gives credit on
/// receipt, so it bounds nothing.
struct Credit {
    var pending: [HTTP2StreamID: Int] = [:]
    var connection = 0
    static let half = 32 * 1024

    mutating func received(_ n: Int, on id: HTTP2StreamID, ended: Bool, write: (HTTP2Frame) -> Void) {
        guard n > 0 else { return }
        connection += n
        if connection >= Credit.half {
            write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connection)))
            connection = 0
        }
        if ended { pending[id] = nil; return }
        let s = (pending[id] ?? 0) + n
        if s >= Credit.half {
            write(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: s)))
            pending[id] = nil
        } else {
            pending[id] = s
        }
    }
}

/// One upstream HTTP/2 connection of an event loop: client streams are opened on it as
/// streams of its own (odd ids it allocates), frames relayed both ways.
final class H2Upstream: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame
    var context: ChannelHandlerContext?
    var nextID: Int32 = 1
    var streams: [HTTP2StreamID: (H2Client, HTTP2StreamID)] = [:]
    var credit = Credit()
    var touched: [H2Client] = []
    let pool: H2Pool
    /// Succeeded once NIO's handler has sent the preface (on channelActive, which comes
    /// after the connect future's callbacks): no stream may be opened before.
    let ready: EventLoopPromise<H2Upstream>

    init(pool: H2Pool) {
        self.pool = pool
        ready = pool.loop.makePromise()
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        ready.succeed(self)
        context.fireChannelActive()
    }

    /// Opens a stream for a client's request; returns its id.
    func open(_ client: H2Client, _ clientID: HTTP2StreamID, _ headers: HTTP2Frame.FramePayload.Headers) -> HTTP2StreamID {
        let id = HTTP2StreamID(nextID)
        nextID += 2
        streams[id] = (client, clientID)
        context?.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(headers))), promise: nil)
        return id
    }

    func send(_ frame: HTTP2Frame) { context?.write(wrapOutboundOut(frame), promise: nil) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard let (client, cid) = streams[frame.streamID] else { return }
        var ended = false
        switch frame.payload {
        case .headers(let h):
            ended = h.endStream
            client.send(HTTP2Frame(streamID: cid, payload: frame.payload))
        case .data(let d):
            ended = d.endStream
            credit.received(d.data.readableBytes, on: frame.streamID, ended: ended) { context.write(wrapOutboundOut($0), promise: nil) }
            client.send(HTTP2Frame(streamID: cid, payload: frame.payload))
        case .rstStream:
            ended = true
            client.send(HTTP2Frame(streamID: cid, payload: frame.payload))
        default:
            return
        }
        if ended {
            streams[frame.streamID] = nil
            client.upstreamEnded(cid)
        }
        if !client.needsFlush {
            client.needsFlush = true
            touched.append(client)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        for c in touched { c.flush() }
        touched.removeAll(keepingCapacity: true)
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        ready.fail(ChannelError.ioOnClosedChannel)
        if pool.current === self { pool.current = nil }
        for (_, (client, cid)) in streams { client.send(HTTP2Frame(streamID: cid, payload: .rstStream(.refusedStream))); client.flush() }
        streams = [:]
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// The loop's upstream HTTP/2 connection (one, made on first use).
final class H2Pool: @unchecked Sendable {
    let loop: EventLoop
    let upstream: SocketAddress
    var current: H2Upstream?
    var connecting: EventLoopFuture<H2Upstream>?

    init(loop: EventLoop, upstream: SocketAddress) {
        self.loop = loop
        self.upstream = upstream
    }

    func acquire() -> EventLoopFuture<H2Upstream> {
        if let c = current { return loop.makeSucceededFuture(c) }
        if let f = connecting { return f }
        let side = H2Upstream(pool: self)
        let f = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([NIOHTTP2Handler(mode: .client), side])
                }
            }
            .connect(to: upstream)
            .flatMap { _ in side.ready.futureResult }
        connecting = f
        f.whenComplete { result in
            self.connecting = nil
            if case .success(let s) = result { self.current = s }
        }
        return f
    }
}

/// One client HTTP/2 connection: each stream it opens is opened upstream, frames relayed.
final class H2Client: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame
    let pool: H2Pool
    var context: ChannelHandlerContext?
    var upstream: H2Upstream?
    var streams: [HTTP2StreamID: HTTP2StreamID] = [:]
    var credit = Credit()
    var needsFlush = false
    /// Frames that came before the upstream connection did.
    var waiting: [HTTP2Frame] = []

    init(pool: H2Pool) { self.pool = pool }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func send(_ frame: HTTP2Frame) { context?.write(wrapOutboundOut(frame), promise: nil) }

    func flush() {
        needsFlush = false
        context?.flush()
    }

    func upstreamEnded(_ id: HTTP2StreamID) { streams[id] = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard frame.streamID != .rootStream else { return }
        guard let up = upstream else {
            waiting.append(frame)
            if waiting.count == 1 {
                pool.acquire().whenComplete { result in
                    guard case .success(let up) = result else { self.context?.close(promise: nil); return }
                    self.upstream = up
                    let frames = self.waiting
                    self.waiting = []
                    for f in frames { self.relay(f, up) }
                    up.context?.flush()
                }
            }
            return
        }
        relay(frame, up)
    }

    private func relay(_ frame: HTTP2Frame, _ up: H2Upstream) {
        switch frame.payload {
        case .headers(var h):
            if let uid = streams[frame.streamID] {
                up.send(HTTP2Frame(streamID: uid, payload: .headers(h))) // trailers
            } else {
                h.headers.add(name: "x-route", value: "bench")
                streams[frame.streamID] = up.open(self, frame.streamID, h)
            }
        case .data(let d):
            credit.received(d.data.readableBytes, on: frame.streamID, ended: d.endStream) { context?.write(wrapOutboundOut($0), promise: nil) }
            if let uid = streams[frame.streamID] { up.send(HTTP2Frame(streamID: uid, payload: frame.payload)) }
        case .rstStream:
            if let uid = streams.removeValue(forKey: frame.streamID) {
                up.send(HTTP2Frame(streamID: uid, payload: frame.payload))
                up.streams[uid] = nil
            }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        upstream?.context?.flush()
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let up = upstream {
            for (_, uid) in streams { up.send(HTTP2Frame(streamID: uid, payload: .rstStream(.cancel))); up.streams[uid] = nil }
            up.context?.flush()
        }
        streams = [:]
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

func serveH2(group: EventLoopGroup, listen: SocketAddress, pools: [ObjectIdentifier: H2Pool]) throws -> Channel {
    try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { ch in
            let pool = pools[ObjectIdentifier(ch.eventLoop)]!
            return ch.eventLoop.makeCompletedFuture {
                try ch.pipeline.syncOperations.addHandlers([NIOHTTP2Handler(mode: .server), H2Client(pool: pool)])
            }
        }
        .bind(to: listen).wait()
}


// MARK: - tunnel: the mTLS pair, bytes in CONNECT streams

/// TLS 1.3 with ALPN h2; each side presents its certificate and requires the other's,
/// signed by DIR/ca.pem (no name checks: the floor trusts its CA, as the bench's HAProxy
/// pair does).
func tunnelTLS(server: Bool) -> NIOSSLContext {
    let dir = tlsDir!, me = server ? "server" : "client"
    do {
        let chain = try NIOSSLCertificate.fromPEMFile("\(dir)/\(me).crt").map { NIOSSLCertificateSource.certificate($0) }
        let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(file: "\(dir)/\(me).key", format: .pem))
        var c = server ? TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
                       : TLSConfiguration.makeClientConfiguration()
        if !server {
            c.certificateChain = chain
            c.privateKey = key
        }
        c.minimumTLSVersion = .tlsv13
        c.trustRoots = .file("\(dir)/ca.pem")
        c.certificateVerification = .noHostnameVerification
        c.applicationProtocols = ["h2"]
        return try NIOSSLContext(configuration: c)
    } catch {
        fail("TLS from \(dir): \(error)")
    }
}

/// weft's tunnel windows (TunnelHTTP2): 1 MiB per stream, 16 MiB per connection.
func tunnelHTTP2() -> (NIOHTTP2Handler.ConnectionConfiguration, NIOHTTP2Handler.StreamConfiguration) {
    var c = NIOHTTP2Handler.ConnectionConfiguration()
    c.initialSettings = [HTTP2Setting(parameter: .maxConcurrentStreams, value: 1000),
                         HTTP2Setting(parameter: .initialWindowSize, value: 1 << 20)]
    c.targetWindowSize = 16 << 20
    var s = NIOHTTP2Handler.StreamConfiguration()
    s.targetWindowSize = 1 << 20
    s.outboundBufferSizeHighWatermark = 256 * 1024
    s.outboundBufferSizeLowWatermark = 128 * 1024
    return (c, s)
}

/// A byte connection's side of a stream splice: what it reads goes out as DATA on the
/// stream, flushed once per read burst.
final class BytesToStream: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var stream: Channel?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        stream?.write(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(unwrapInboundIn(data)))), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) { stream?.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        stream?.close(promise: nil)
        stream = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// A stream's side: DATA goes to the byte connection; the first HEADERS is the CONNECT
/// (tunnel-b: dial the upstream, answer 200) or its answer (tunnel-a: start reading the
/// client).
final class StreamToBytes: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload
    var bytes: Channel?
    let upstream: SocketAddress?
    private var sawHead = false

    /// `upstream`: tunnel-b's, dialed on the CONNECT; nil on tunnel-a, where `bytes` is
    /// the client, not reading until the CONNECT is answered.
    init(bytes: Channel?, upstream: SocketAddress?) {
        self.bytes = bytes
        self.upstream = upstream
    }

    func channelActive(context: ChannelHandlerContext) {
        if upstream == nil {
            let connect: HPACKHeaders = [":method": "CONNECT", ":authority": "upstream"]
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: connect))), promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers where !sawHead:
            sawHead = true
            if let upstream {
                let stream = context.channel
                let back = BytesToStream()
                back.stream = stream
                ClientBootstrap(group: context.eventLoop)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { $0.pipeline.addHandler(back) }
                    .connect(to: upstream)
                    .whenComplete { result in
                        switch result {
                        case .success(let up):
                            self.bytes = up
                            stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])), promise: nil)
                        case .failure:
                            stream.close(promise: nil)
                        }
                    }
            } else {
                bytes?.setOption(.autoRead, value: true).whenComplete { _ in }
            }
        case .data(let d):
            if case .byteBuffer(let b) = d.data, b.readableBytes > 0 { bytes?.write(b, promise: nil) }
            if d.endStream { bytes?.close(promise: nil) }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { bytes?.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        bytes?.close(promise: nil)
        bytes = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// tunnel-b: TLS, HTTP/2 with NIO's stream channels, each stream spliced to the upstream.
func serveTunnelB(group: EventLoopGroup, listen: SocketAddress, upstream: SocketAddress) throws -> Channel {
    let tls = tunnelTLS(server: true)
    let (connection, stream) = tunnelHTTP2()
    return try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { ch in
            ch.eventLoop.makeCompletedFuture {
                let sync = ch.pipeline.syncOperations
                try sync.addHandler(NIOSSLServerHandler(context: tls))
                _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: connection, streamConfiguration: stream) { s in
                    s.pipeline.addHandler(StreamToBytes(bytes: nil, upstream: upstream))
                }
            }
        }
        .bind(to: listen).wait()
}

/// tunnel-a: the loop's TLS connection to the peer (one, made on first use).
final class TunnelPeer: @unchecked Sendable {
    let loop: EventLoop
    let peer: SocketAddress
    let tls: NIOSSLContext
    var mux: EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer>?

    init(loop: EventLoop, peer: SocketAddress, tls: NIOSSLContext) {
        self.loop = loop
        self.peer = peer
        self.tls = tls
    }

    func multiplexer() -> EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer> {
        if let mux { return mux }
        let made = loop.makePromise(of: NIOHTTP2Handler.StreamMultiplexer.self)
        let (connection, stream) = tunnelHTTP2()
        let tls = tls
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let sync = ch.pipeline.syncOperations
                    try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil))
                    made.succeed(try sync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: connection,
                                                                 streamConfiguration: stream) { $0.close() })
                }
            }
            .connect(to: peer)
            .whenComplete { result in
                switch result {
                case .success(let ch): ch.closeFuture.whenComplete { _ in self.mux = nil }
                case .failure(let e):
                    made.fail(e)
                    self.mux = nil
                }
            }
        mux = made.futureResult
        return made.futureResult
    }
}

func serveTunnelA(group: EventLoopGroup, listen: SocketAddress, peers: [ObjectIdentifier: TunnelPeer]) throws -> Channel {
    try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.autoRead, value: false)
        .childChannelInitializer { client in
            let toStream = BytesToStream()
            return client.pipeline.addHandler(toStream).flatMap {
                peers[ObjectIdentifier(client.eventLoop)]!.multiplexer().flatMap { mux in
                    let made = client.eventLoop.makePromise(of: Channel.self)
                    mux.createStreamChannel(promise: made) { s in s.pipeline.addHandler(StreamToBytes(bytes: client, upstream: nil)) }
                    return made.futureResult.map { s in toStream.stream = s }
                }
            }
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
        } else if mode == "tunnel-a" {
            let tls = tunnelTLS(server: false)
            var peers: [ObjectIdentifier: TunnelPeer] = [:]
            for loop in group.makeIterator() { peers[ObjectIdentifier(loop)] = TunnelPeer(loop: loop, peer: upstream, tls: tls) }
            servers.append(try serveTunnelA(group: group, listen: listen, peers: peers))
        } else if mode == "tunnel-b" {
            servers.append(try serveTunnelB(group: group, listen: listen, upstream: upstream))
        } else if mode == "h2" {
            var pools: [ObjectIdentifier: H2Pool] = [:]
            for loop in group.makeIterator() { pools[ObjectIdentifier(loop)] = H2Pool(loop: loop, upstream: upstream) }
            servers.append(try serveH2(group: group, listen: listen, pools: pools))
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
