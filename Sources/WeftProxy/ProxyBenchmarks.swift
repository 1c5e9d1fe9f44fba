import NIOCore
import NIOEmbedded
import NIOHTTP1

/// Entry points for weft-proxy-bench — never used by the agent: the same request head
/// read many times by weft's HTTP/1 parser and by NIO's (llhttp, the codec the proxy uses
/// today), each behind the same embedded channel, so the difference is the parser's.
public enum ProxyBenchmarks {
    public enum Parser: String, CaseIterable, Sendable {
        /// The channel and a handler that only takes the bytes: what both rows include.
        case channelOnly = "channel_only"
        case nio
        case weft
    }

    /// Reads `request` (one complete head) `count` times as one keep-alive connection's
    /// reads; returns how many header fields were seen (so nothing is optimised away).
    public static func parse(_ request: [UInt8], count: Int, with parser: Parser) -> Int {
        let sink = FieldCounter()
        let ch = EmbeddedChannel()
        switch parser {
        case .channelOnly: try! ch.pipeline.syncOperations.addHandler(BytesSink(sink))
        case .nio: try! ch.pipeline.syncOperations.addHandlers([ByteToMessageHandler(HTTPRequestDecoder()), NIOSink(sink)])
        case .weft: try! ch.pipeline.syncOperations.addHandler(WeftSink(sink))
        }
        let buffer = ByteBuffer(bytes: request)
        for _ in 0..<count { try! ch.writeInbound(buffer) }
        _ = try? ch.finish()
        return sink.fields
    }

    final class FieldCounter { var fields = 0 }

    final class BytesSink: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let counter: FieldCounter
        init(_ c: FieldCounter) { counter = c }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { counter.fields += unwrapInboundIn(data).readableBytes > 0 ? 1 : 0 }
    }

    final class NIOSink: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        let counter: FieldCounter
        init(_ c: FieldCounter) { counter = c }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .head(let h) = unwrapInboundIn(data) { counter.fields += h.headers.count }
        }
    }

    final class WeftSink: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let counter: FieldCounter
        var parser = HTTP1RequestParser()
        init(_ c: FieldCounter) { counter = c }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var b = unwrapInboundIn(data)
            while let event = try? parser.parse(&b) {
                if case .head(let h) = event { counter.fields += h.fields.count }
            }
        }
    }
}
