import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves the Prometheus text (DESIGN.md: 127.0.0.1:15090 by default): GET /metrics, and
/// /stats/prometheus as Envoy names it, so scrape configs written for Istio work.
enum MetricsServer {
    static func start(group: EventLoopGroup, host: String, port: UInt16, render: @escaping @Sendable () -> [UInt8]) throws -> Channel {
        let address = try SocketAddress(ipAddress: host, port: Int(port))
        return try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(MetricsHandler(render: render))
                }
            }
            .bind(to: address).wait()
    }
}

final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> [UInt8]
    private var head: HTTPRequestHead?

    init(render: @escaping @Sendable () -> [UInt8]) {
        self.render = render
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let h = head else { return }
            let path = h.uri.split(separator: "?").first.map(String.init) ?? h.uri
            let found = h.method == .GET && (path == "/metrics" || path == "/stats/prometheus")
            let body = found ? ByteBuffer(bytes: render()) : ByteBuffer(string: "not found: try /metrics\n")
            var headers = HTTPHeaders([("content-length", String(body.readableBytes))])
            headers.add(name: "content-type", value: found ? "text/plain; version=0.0.4" : "text/plain")
            if !h.isKeepAlive { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let keep = h.isKeepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keep { context.close(promise: nil) }
            }
            head = nil
        }
    }
}
