import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves the Prometheus text (DESIGN.md: 127.0.0.1:15090 by default): GET /metrics, and
/// /stats/prometheus as Envoy names it, so scrape configs written for Istio work; and the
/// service graph: /graph (the page) and /graph.json?window=SECONDS (what it draws).
enum MetricsServer {
    /// Serves on `socket`, a bound listening socket (ListeningSocket, or handed over).
    static func start(group: EventLoopGroup, socket: CInt, render: @escaping @Sendable () -> [UInt8],
                      graph: GraphRecorder) throws -> Channel {
        try ServerBootstrap(group: group)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(MetricsHandler(render: render, graph: graph))
                }
            }
            .withBoundSocket(socket).wait()
    }
}

final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> [UInt8]
    private let graph: GraphRecorder
    private var head: HTTPRequestHead?

    init(render: @escaping @Sendable () -> [UInt8], graph: GraphRecorder) {
        self.render = render
        self.graph = graph
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    /// The body and content type for a GET of `path`, nil if there is no such page.
    func page(_ path: String, query: Substring?) -> (ByteBuffer, String)? {
        switch path {
        case "/metrics", "/stats/prometheus":
            return (ByteBuffer(bytes: render()), "text/plain; version=0.0.4")
        case "/graph":
            return (ByteBuffer(string: GraphPage.html), "text/html; charset=utf-8")
        case "/graph.json":
            let window = query?.split(separator: "&").lazy.compactMap { p -> Double? in
                p.hasPrefix("window=") ? Double(p.dropFirst("window=".count)) : nil
            }.first ?? 60
            let g = graph.graph(window: min(max(window, GraphRecorder.interval), GraphRecorder.longest))
            return (ByteBuffer(bytes: (try? Self.encoder.encode(g)) ?? Data()), "application/json")
        default:
            return nil
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let h = head else { return }
            let parts = h.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            let path = parts.first.map(String.init) ?? h.uri
            let served = h.method == .GET ? page(path, query: parts.count > 1 ? parts[1] : nil) : nil
            let found = served != nil
            let body = served?.0 ?? ByteBuffer(string: "not found: try /metrics or /graph\n")
            var headers = HTTPHeaders([("content-length", String(body.readableBytes))])
            headers.add(name: "content-type", value: served?.1 ?? "text/plain")
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
