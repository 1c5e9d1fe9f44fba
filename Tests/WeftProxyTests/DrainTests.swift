import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing
@testable import WeftProxy

/// A served HTTP/2 connection drained as a handover drains it (StreamCounter.drain),
/// against NIO's client over two embedded channels on one loop.
@Suite struct DrainTests {
    /// The server side: counts the streams the client opens and answers them when told,
    /// as the proxy's session would.
    final class Answerer: ChannelInboundHandler {
        typealias InboundIn = HTTP2Frame
        typealias OutboundOut = HTTP2Frame
        let counter: StreamCounter
        var context: ChannelHandlerContext?
        var pending: [HTTP2StreamID] = []
        init(_ counter: StreamCounter) { self.counter = counter }
        func handlerAdded(context: ChannelHandlerContext) { self.context = context }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            if case .headers = frame.payload {
                counter.opened(frame.streamID)
                pending.append(frame.streamID)
            }
        }
        func answer(_ id: HTTP2StreamID) {
            pending.removeAll { $0 == id }
            let h = HPACKHeaders([(":status", "200")])
            context?.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: h, endStream: true)))), promise: nil)
            counter.closed()
        }
    }

    /// What the client hears: GOAWAY last stream ids, resets, answers.
    final class Heard: ChannelInboundHandler {
        typealias InboundIn = HTTP2Frame
        var log: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.payload {
            case .goAway(let last, let code, _): log.append("GOAWAY \(last == .maxID ? "max" : "\(Int(last))") \(code == .noError ? "NO_ERROR" : "\(code)")")
            case .rstStream(let code): log.append("RST \(Int(frame.streamID)) \(code)")
            case .headers: log.append("answer \(Int(frame.streamID))")
            default: break
            }
        }
    }

    struct Pair {
        let loop = EmbeddedEventLoop()
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let counter: StreamCounter
        let answerer: Answerer
        let heard = Heard()

        init() throws {
            client = EmbeddedChannel(loop: loop)
            server = EmbeddedChannel(loop: loop)
            counter = StreamCounter(eventLoop: loop, idleTimeout: nil, server: true)
            answerer = Answerer(counter)
            try server.pipeline.syncOperations.addHandlers([NIOHTTP2Handler(mode: .server), answerer, counter])
            try client.pipeline.syncOperations.addHandlers([NIOHTTP2Handler(mode: .client), heard])
            try server.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
            try client.connect(to: .init(ipAddress: "10.0.0.2", port: 1)).wait()
            try pump()
        }

        func pump() throws {
            for _ in 0..<8 {
                while let b = try client.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try server.writeInbound(bb) } }
                while let b = try server.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try client.writeInbound(bb) } }
                loop.run()
            }
        }

        func open(_ id: Int) {
            let h = HPACKHeaders([(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")])
            client.writeAndFlush(HTTP2Frame(streamID: HTTP2StreamID(id), payload: .headers(.init(headers: h, endStream: true))), promise: nil)
        }
    }

    /// A stream the client opened before it heard the first GOAWAY is served, not refused
    /// (NIO refuses every stream once it has sent a GOAWAY itself); the last GOAWAY names
    /// it; the connection closes once it is answered.
    @Test func aStreamOnItsWayWhenTheDrainBeginsIsServed() throws {
        let p = try Pair()
        p.open(1)
        try p.pump()
        p.counter.drain()
        p.open(3) // crosses the GOAWAY on the wire
        try p.pump()
        #expect(p.answerer.pending == [1, 3])
        #expect(p.heard.log == ["GOAWAY max NO_ERROR"])
        p.answerer.answer(1)
        try p.pump()
        p.loop.advanceTime(by: StreamCounter.quiesce)
        try p.pump()
        #expect(p.heard.log == ["GOAWAY max NO_ERROR", "answer 1", "GOAWAY 3 NO_ERROR"])
        #expect(p.server.isActive)
        p.answerer.answer(3)
        try p.pump()
        #expect(p.heard.log.last == "answer 3")
        #expect(!p.server.isActive)
    }

    /// With nothing open when the quiet second is over, the connection closes then.
    @Test func anIdleDrainedConnectionClosesAfterTheQuietSecond() throws {
        let p = try Pair()
        p.counter.drain()
        try p.pump()
        #expect(p.server.isActive)
        p.loop.advanceTime(by: StreamCounter.quiesce)
        try p.pump()
        #expect(p.heard.log == ["GOAWAY max NO_ERROR", "GOAWAY 0 NO_ERROR"])
        #expect(!p.server.isActive)
    }
}
