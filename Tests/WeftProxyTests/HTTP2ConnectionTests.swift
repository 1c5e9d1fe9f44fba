import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing
@testable import WeftProxy

/// A client HTTP/2 connection as the proxy's pools build one (NIO's handler, then
/// CloseOnError) against a NIO server, over two embedded channels on one loop.
@Suite struct HTTP2ConnectionTests {
    final class Seen: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTP2Frame.FramePayload
        var statuses: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .headers(let h) = unwrapInboundIn(data), let s = h.headers.first(name: ":status") { statuses.append(s) }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) {}
    }

    /// Server streams, by id: what the test writes on them.
    final class ServerStreams: @unchecked Sendable {
        var channels: [Channel] = []
    }

    @Test func oneStreamsErrorLeavesTheOthersAndAFloodEndsTheConnection() throws {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop), server = EmbeddedChannel(loop: loop)
        let streams = ServerStreams()
        var closedFor: [String] = []
        var serverConfig = NIOHTTP2Handler.ConnectionConfiguration()
        serverConfig.headerBlockValidation = .disabled // so it can send what a broken upstream sends
        let mux = try client.pipeline.syncOperations.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(),
                                                                            streamConfiguration: .init()) { $0.close() }
        try client.pipeline.syncOperations.addHandler(CloseOnError { closedFor.append("\($0)") })
        _ = try server.pipeline.syncOperations.configureHTTP2Pipeline(mode: .server, connectionConfiguration: serverConfig,
                                                                      streamConfiguration: .init()) { ch in
            streams.channels.append(ch)
            return ch.eventLoop.makeSucceededVoidFuture()
        }
        try client.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        try server.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        func pump() throws {
            for _ in 0..<8 {
                while let b = try client.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try server.writeInbound(bb) } }
                while let b = try server.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try? client.writeInbound(bb) } }
                loop.run()
            }
        }
        func request() throws -> Seen {
            let seen = Seen()
            let p = loop.makePromise(of: Channel.self)
            mux.createStreamChannel(promise: p) { $0.pipeline.addHandler(seen) }
            loop.run()
            let ch = try p.futureResult.wait()
            let head: HPACKHeaders = [":method": "GET", ":scheme": "http", ":authority": "a", ":path": "/"]
            ch.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: head, endStream: true)), promise: nil)
            try pump()
            return seen
        }
        let bad = try request(), good = try request()
        #expect(streams.channels.count == 2)
        // A response header no HTTP/2 peer may send: NIO resets that stream only.
        streams.channels[0].writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200", "Bad-Name": "x"])), promise: nil)
        try pump()
        streams.channels[1].writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"], endStream: true)), promise: nil)
        try pump()
        #expect(bad.statuses.isEmpty && good.statuses == ["200"])
        #expect(client.isActive && closedFor.isEmpty)
        // Empty DATA frames, one after another: NIO's flood guard gives the connection up,
        // and so does the pool's.
        let flood = try request()
        let s = try #require(streams.channels.last)
        s.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])), promise: nil)
        for _ in 0..<3 { s.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer()))), promise: nil) }
        try pump()
        #expect(flood.statuses == ["200"])
        #expect(!client.isActive && closedFor.count == 1 && closedFor[0].contains("ExcessiveEmptyDataFrames"), "\(closedFor)")
    }
}
