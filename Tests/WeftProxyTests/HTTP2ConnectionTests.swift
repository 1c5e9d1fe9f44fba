import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Testing
import WeftConfig
@testable import WeftProxy

/// An upstream HTTP/2 connection as the proxy's pool builds one (NIO's handler in frame
/// mode, HTTP2ClientSession, the stream counter, CloseOnError) against a NIO server,
/// over two embedded channels on one loop.
@Suite struct HTTP2ConnectionTests {
    /// What an exchange would have been told by one upstream stream.
    final class Exchange: ExchangeUpstreamDelegate {
        var parts: [String] = []
        var bodyBytes = 0
        var closed = false
        var refused = false
        var writable: [Bool] = []

        func upstreamRead(_ part: HTTP1ClientCodec.ResponsePart, from conn: any ExchangeUpstream) {
            switch part {
            case .head(let h): parts.append("NIO head \(h.status.code)")
            case .block(_, let status): parts.append("head \(status)")
            case .received: parts.append("received")
            case .body(let b): bodyBytes += b.readableBytes
            case .end(let t): parts.append(t.map { "end \($0.map { "\($0.name)=\($0.value)" })" } ?? "end")
            }
        }

        func upstreamReadComplete(from conn: any ExchangeUpstream) {}

        func upstreamClosed(_ conn: any ExchangeUpstream) {
            closed = true
            refused = conn.refused
        }

        func upstreamWritabilityChanged(_ conn: any ExchangeUpstream, writable: Bool) { self.writable.append(writable) }
    }

    /// The GOAWAY frames that reach the server (NIO's multiplexer passes stream 0's frames on).
    final class GoAwaysSeen: ChannelInboundHandler {
        typealias InboundIn = HTTP2Frame
        let seen: (HTTP2ErrorCode) -> Void
        init(_ seen: @escaping (HTTP2ErrorCode) -> Void) { self.seen = seen }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .goAway(_, let code, _) = unwrapInboundIn(data).payload { seen(code) }
        }
    }

    /// The server's streams, in the order they opened.
    final class ServerStreams: @unchecked Sendable {
        var channels: [Channel] = []
    }

    struct Pair {
        let loop: EmbeddedEventLoop
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let session: HTTP2ClientSession
        let streams: ServerStreams
        let closedFor: () -> [String]
        /// The error codes of the GOAWAY frames the server received.
        let goAways: () -> [HTTP2ErrorCode]

        /// Moves bytes both ways until neither side has more to say.
        func pump() throws {
            for _ in 0..<8 {
                while let b = try client.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try server.writeInbound(bb) } }
                while let b = try server.readOutbound(as: IOData.self) { if case .byteBuffer(let bb) = b { try? client.writeInbound(bb) } }
                loop.run()
            }
        }

        /// A GET on a new stream, as the exchange sends one.
        func request(body: Int = 0) throws -> (HTTP2UpstreamStream, Exchange) {
            let stream = try #require(session.makeStream())
            let ex = Exchange()
            stream.delegate = ex
            stream.send(.head(HTTPRequestHead(version: .http1_1, method: body > 0 ? .POST : .GET, uri: "/", headers: ["host": "a"])), flush: false)
            if body > 0 {
                var left = body
                while left > 0 {
                    let n = min(left, 16384)
                    stream.send(.body(.byteBuffer(ByteBuffer(repeating: 0x61, count: n))), flush: true)
                    left -= n
                    try pump()
                }
            }
            stream.send(.end(nil), flush: true)
            try pump()
            return (stream, ex)
        }
    }

    /// `serverStreamsRead`: whether the server's streams read what they are sent (else
    /// they give no window back).
    func pair(serverStreamsRead: Bool = true) throws -> Pair {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop), server = EmbeddedChannel(loop: loop)
        let streams = ServerStreams()
        var closedFor: [String] = []
        try client.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        let session = HTTP2ClientSession(endpoint: SocketKey(IPAddress("10.0.0.1")!, 8080), loop: loop, flushes: FlushBatch())
        let counter = StreamCounter(eventLoop: loop, idleTimeout: nil, server: false)
        try client.pipeline.syncOperations.addHandlers(HTTP2ClientSession.handlers(session, counter: counter) { closedFor.append("\($0)") })
        session.start()
        var serverConfig = NIOHTTP2Handler.ConnectionConfiguration()
        serverConfig.headerBlockValidation = .disabled // so it can send what a broken upstream sends
        _ = try server.pipeline.syncOperations.configureHTTP2Pipeline(mode: .server, connectionConfiguration: serverConfig,
                                                                      streamConfiguration: .init()) { ch in
            streams.channels.append(ch)
            return ch.setOption(.autoRead, value: serverStreamsRead)
        }
        var goAways: [HTTP2ErrorCode] = []
        try server.pipeline.syncOperations.addHandler(GoAwaysSeen { goAways.append($0) })
        try server.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        let p = Pair(loop: loop, client: client, server: server, session: session, streams: streams, closedFor: { closedFor },
                     goAways: { goAways })
        try p.pump()
        return p
    }

    @Test func oneStreamsErrorLeavesTheOthersAndAFloodEndsTheConnection() throws {
        let p = try pair()
        let (_, bad) = try p.request(), (_, good) = try p.request()
        #expect(p.streams.channels.count == 2)
        // A response header no HTTP/2 peer may send: NIO resets that stream only.
        p.streams.channels[0].writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200", "Bad-Name": "x"])), promise: nil)
        try p.pump()
        p.streams.channels[1].writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"], endStream: true)), promise: nil)
        try p.pump()
        #expect(bad.parts.isEmpty && bad.closed && !bad.refused)
        #expect(good.parts == ["head 200", "end"] && !good.closed)
        #expect(p.client.isActive && p.closedFor().isEmpty)
        // Empty DATA frames, one after another: NIO's flood guard gives the connection up,
        // and so does the pool's; the stream in flight is told.
        let (_, flood) = try p.request()
        let s = try #require(p.streams.channels.last)
        s.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])), promise: nil)
        for _ in 0..<3 { s.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer()))), promise: nil) }
        try p.pump()
        #expect(flood.parts == ["head 200"] && flood.closed)
        #expect(!p.client.isActive && p.closedFor().count == 1 && p.closedFor()[0].contains("ExcessiveEmptyDataFrames"), "\(p.closedFor())")
        #expect(p.session.retired && p.session.makeStream() == nil)
    }

    @Test func responseBlocksNoHTTP2PeerMaySendResetTheirStream() throws {
        let p = try pair()
        let bad: [HPACKHeaders] = [
            [":status": "200", "x-a": "1\r\nset-cookie: evil=1"], // a value that would split an HTTP/1 head
            [":status": "200", "Upper": "x"], // a name not in lower case
            [":status": "200", "connection": "close"], // connection-specific
            [":status": "20x"], // not a status
            ["x-a": "1", ":status": "200"], // a pseudo-field after a regular one
            [":status": "200", ":path": "/"], // a request's pseudo-field
            ["x-a": "1"], // no status
        ]
        for block in bad {
            let (_, ex) = try p.request()
            try #require(p.streams.channels.last).writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: block, endStream: true)),
                                                                promise: nil)
            try p.pump()
            #expect(ex.parts.isEmpty && ex.closed && !ex.refused, "\(block)")
        }
        // Trailers with a pseudo-field, after a good head.
        let (_, ex) = try p.request()
        let s = try #require(p.streams.channels.last)
        s.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])), promise: nil)
        s.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"], endStream: true)), promise: nil)
        try p.pump()
        #expect(ex.parts == ["head 200"] && ex.closed)
        // The connection serves on.
        let (_, good) = try p.request()
        try #require(p.streams.channels.last).writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"], endStream: true)),
                                                            promise: nil)
        try p.pump()
        #expect(good.parts == ["head 200", "end"] && p.client.isActive && p.closedFor().isEmpty)
    }

    @Test func aRequestFieldThatCannotBeSentFailsTheStreamNotTheConnection() throws {
        let p = try pair()
        let stream = try #require(p.session.makeStream())
        let ex = Exchange()
        stream.delegate = ex
        // A route's header value with CR LF in it.
        stream.send(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: ["host": "a", "x-route": "a\r\nb: c"])),
                    flush: true)
        try p.pump()
        #expect(ex.closed && p.streams.channels.isEmpty && p.client.isActive)
    }

    @Test func aGoAwayRefusesTheStreamsAboveItsLastAndRetiresTheConnection() throws {
        let p = try pair()
        let (_, first) = try p.request(), (_, second) = try p.request(), (_, third) = try p.request()
        // The server processed stream 1 only (RFC 9113 §6.8): 3 and 5 were not processed,
        // so the exchanges may retry them anywhere.
        p.server.writeAndFlush(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: 1, errorCode: .noError, opaqueData: nil)),
                               promise: nil)
        try p.pump()
        #expect(second.closed && second.refused && third.closed && third.refused)
        #expect(!first.closed)
        #expect(p.session.retired && p.session.makeStream() == nil)
        // Stream 1 still finishes on the retired connection.
        p.streams.channels[0].writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "204"], endStream: true)), promise: nil)
        try p.pump()
        #expect(first.parts == ["head 204", "end"] && !first.closed)
    }

    /// Clients cancel requests (a Rapid Reset flood does, hundreds at a time), and the proxy
    /// resets their upstream streams while the upstream's answers are already on the way:
    /// those answers are ignored (RFC 9113 §5.1), however many — NIO by default remembers
    /// only the last 32 resets and fails the connection on an answer to an older one.
    @Test func answersToHundredsOfCancelledStreamsAreIgnoredAndTheConnectionServesOn() throws {
        let p = try pair()
        // 180 resets: well past NIO's 32, under the embedded server's own Rapid Reset guard.
        for _ in 0..<2 {
            var cancelled: [(HTTP2UpstreamStream, Exchange)] = []
            for _ in 0..<90 { cancelled.append(try p.request()) }
            // The server answers each; the answers cross the proxy's resets on the wire.
            for s in p.streams.channels.suffix(90) {
                s.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])), promise: nil)
                s.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: "late")), endStream: true)),
                                promise: nil)
            }
            for (stream, _) in cancelled { stream.close() }
            // All of it in one read, as TCP delivers it.
            var answers = ByteBuffer()
            while let b = try p.server.readOutbound(as: IOData.self) { if case .byteBuffer(var bb) = b { answers.writeBuffer(&bb) } }
            try p.client.writeInbound(answers)
            try p.pump()
            #expect(cancelled.allSatisfy { $0.1.parts.isEmpty })
        }
        #expect(p.client.isActive && p.closedFor().isEmpty && p.goAways().isEmpty, "\(p.closedFor()) \(p.goAways())")
        let (_, good) = try p.request()
        try #require(p.streams.channels.last).writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"], endStream: true)),
                                                            promise: nil)
        try p.pump()
        #expect(good.parts == ["head 200", "end"])
    }

    /// A connection error NIO finds in what the upstream sent (here DATA on a stream that
    /// was never opened) makes NIO send GOAWAY and give the connection up: the pool closes
    /// it, its streams are told, and the next request gets another connection — rather than
    /// requests left on a connection whose every later frame NIO refuses.
    @Test func aConnectionNIOGaveUpIsClosedAndTakesNoStream() throws {
        let p = try pair()
        let (_, inFlight) = try p.request()
        // DATA on stream 101, idle: a connection error (PROTOCOL_ERROR) by RFC 9113 §5.1.
        try? p.client.writeInbound(ByteBuffer(bytes: [0, 0, 1, 0, 0, 0, 0, 0, 101, 0x61]))
        try p.pump()
        #expect(!p.client.isActive && p.closedFor().count == 1, "\(p.closedFor())")
        #expect(inFlight.closed && p.session.retired && p.session.makeStream() == nil)
    }

    @Test func aResponseAndItsTrailersReachTheExchangeAndAHeadWithoutBodyIsOneFrame() throws {
        let p = try pair()
        let (_, ex) = try p.request()
        let s = p.streams.channels[0]
        s.write(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200", "content-type": "application/grpc"])), promise: nil)
        s.write(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: "hello")))), promise: nil)
        s.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: ["grpc-status": "0"], endStream: true)), promise: nil)
        try p.pump()
        #expect(ex.parts == ["head 200", "end [\"grpc-status=0\"]"] && ex.bodyBytes == 5 && !ex.closed)
    }

    @Test func aBodyTheServerDoesNotTakeMakesTheStreamUnwritableUntilItDoes() throws {
        let p = try pair(serverStreamsRead: false)
        // 200 KiB against the server's 64 KiB window: NIO holds what does not fit, and the
        // stream says it cannot take more, so the exchange stops reading its client.
        let (stream, ex) = try p.request(body: 200 * 1024)
        #expect(ex.writable.first == false)
        #expect(!stream.isWritable)
        // The server reads: window comes back, the held bytes go, the stream is writable.
        for _ in 0..<8 {
            p.streams.channels[0].read()
            try p.pump()
        }
        #expect(ex.writable.last == true && stream.isWritable)
    }

    @Test func aPausedStreamGivesNoWindowBack() throws {
        let p = try pair()
        let (stream, ex) = try p.request()
        stream.setPaused(true)
        let s = p.streams.channels[0]
        s.write(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])), promise: nil)
        for _ in 0..<13 { s.write(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(repeating: 0x62, count: 16384)))), promise: nil) }
        s.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)), promise: nil)
        try p.pump()
        // The exchange could not pass the body on (its client was not taking it): the
        // server may send one window's worth, no more.
        #expect(ex.bodyBytes <= 65535 && ex.bodyBytes >= 49152, "\(ex.bodyBytes)")
        stream.setPaused(false)
        try p.pump()
        #expect(ex.bodyBytes == 13 * 16384 && ex.parts == ["head 200", "end"])
    }
}

/// What the tunnel hands NIO's HTTP/2 decoder after TLS (TLSReadCompactor).
@Suite struct TLSReadCompactorTests {
    /// Reads that came out of a storage NIOSSL grew for a bulk transfer reach the decoder
    /// as copies of at most 16 KiB, each in a storage of its own size — so the decoder's
    /// buffer, which grows to fit what it is handed and never shrinks, stays small; small
    /// reads of a small storage pass as they are.
    @Test func bulkReadsReachTheDecoderInSmallPiecesOfTheirOwn() throws {
        let ch = EmbeddedChannel(handler: TLSReadCompactor())
        var grown = ByteBuffer()
        grown.reserveCapacity(8 << 20)
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        grown.writeBytes(bytes)
        try ch.writeInbound(grown)
        var pieces: [ByteBuffer] = []
        while let p = try ch.readInbound(as: ByteBuffer.self) { pieces.append(p) }
        #expect(pieces.count == 7)
        #expect(pieces.allSatisfy { $0.readableBytes <= 16 * 1024 && $0.storageCapacity <= 32 * 1024 })
        #expect(pieces.flatMap { Array($0.readableBytesView) } == bytes)

        // A few hundred bytes out of that grown storage: copied out too.
        var small = grown
        small.moveReaderIndex(to: 99_000)
        try ch.writeInbound(small)
        let out = try #require(try ch.readInbound(as: ByteBuffer.self))
        #expect(out.readableBytes == 1_000 && out.storageCapacity <= 32 * 1024)

        // An ordinary read passes untouched.
        let ordinary = ByteBuffer(bytes: Array(bytes.prefix(900)))
        try ch.writeInbound(ordinary)
        #expect(try ch.readInbound(as: ByteBuffer.self) == ordinary)
        _ = try ch.finish()
    }
}
