import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing
@testable import WeftProxy

/// HTTP2Heads.isValidRequest stands in for NIO's header block validation on the tunnel's
/// requests connections, which turn NIO's off: it must refuse every request block NIO
/// refuses and pass every one NIO passes. NIO is the oracle — a NIO server in frame mode
/// with validation on, sent each block by a client with validation off.
@Suite struct HTTP2HeadsTests {
    /// What a NIO server did with the HEADERS frames it was sent: the streams it delivered.
    final class Delivered: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTP2Frame
        var streams: Set<HTTP2StreamID> = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .headers = unwrapInboundIn(data).payload { streams.insert(unwrapInboundIn(data).streamID) }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) {} // a stream's error: NIO reset it
    }

    /// NIO's verdict on each block: delivered (valid) or reset (invalid).
    func nioAccepts(_ blocks: [HPACKHeaders]) throws -> [Bool] {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop), server = EmbeddedChannel(loop: loop)
        var off = NIOHTTP2Handler.ConnectionConfiguration()
        off.headerBlockValidation = .disabled
        try client.pipeline.syncOperations.addHandler(NIOHTTP2Handler(mode: .client, connectionConfiguration: off, streamConfiguration: .init()))
        let delivered = Delivered()
        try server.pipeline.syncOperations.addHandlers([NIOHTTP2Handler(mode: .server), delivered])
        try client.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        try server.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        func pump() throws {
            for _ in 0..<4 {
                while let b = try client.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try server.writeInbound(bb) } }
                while let b = try server.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try client.writeInbound(bb) } }
                loop.run()
            }
        }
        try pump()
        var ids: [HTTP2StreamID] = []
        for (i, block) in blocks.enumerated() {
            let id = HTTP2StreamID(2 * i + 1)
            ids.append(id)
            client.writeAndFlush(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block, endStream: true))), promise: nil)
            try pump()
        }
        #expect(server.isActive)
        return ids.map { delivered.streams.contains($0) }
    }

    @Test func requestBlocksAreJudgedAsNIOJudgesThem() throws {
        let pseudo = [(":method", "GET"), (":method", "CONNECT"), (":method", "G T"), (":scheme", "http"), (":path", "/"), (":path", ""),
                      (":path", "/a b"), (":authority", "web:80"), (":authority", "w\u{7f}b"), (":status", "200"), (":protocol", "websocket"),
                      (":x", "1")]
        let regular = [("x-a", "1"), ("x-a", "a\r\nb"), ("x-a", "a\u{0}b"), ("X-Upper", "1"), ("te", "trailers"), ("te", "gzip"),
                       ("connection", "close"), ("upgrade", "h2c"), ("transfer-encoding", "chunked"), ("keep-alive", "1"),
                       ("proxy-connection", "x"), ("a b", "1"), ("weft-target", "10.0.0.1:80"), ("x-a", " padded "), ("caf\u{e9}", "1"),
                       ("host", "web")]
        var rng = SplitMix64(seed: 42)
        var blocks: [HPACKHeaders] = [
            [":method": "GET", ":scheme": "http", ":path": "/", ":authority": "web"],
            [":method": "CONNECT", ":authority": "web:443"],
        ]
        for _ in 0..<600 {
            var fields: [(String, String)] = []
            // Mostly a well-formed start, so the refusals that follow are the ones tested.
            if rng.next() % 4 != 0 { fields = [(":method", "GET"), (":scheme", "http"), (":path", "/")] }
            for _ in 0..<Int(rng.next() % 4) {
                let f = rng.next() % 3 == 0 ? pseudo[Int(rng.next() % UInt64(pseudo.count))] : regular[Int(rng.next() % UInt64(regular.count))]
                fields.insert(f, at: Int(rng.next() % UInt64(fields.count + 1)))
            }
            blocks.append(HPACKHeaders(fields))
        }
        var verdicts: [Bool] = []
        // A connection per 50 blocks: NIO gives up a connection after 200 stream errors.
        for start in stride(from: 0, to: blocks.count, by: 50) {
            verdicts += try nioAccepts(Array(blocks[start..<min(start + 50, blocks.count)]))
        }
        var valid = 0
        for (block, nio) in zip(blocks, verdicts) {
            #expect(HTTP2Heads.isValidRequest(block) == nio, "\(block): NIO says \(nio)")
            if nio { valid += 1 }
        }
        // Both outcomes were tried, many times.
        #expect(valid > 50 && blocks.count - valid > 50, "\(valid) of \(blocks.count) valid")
    }
}
