import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import WeftProxy

/// What the proxy handler would see: every request part, and any error, in order.
private final class Recorder: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    var parts: [String] = []
    var heads: [HTTPRequestHead] = []
    var errors: [HTTP1RequestParser.Failure] = []
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            heads.append(h)
            parts.append("head \(h.method.rawValue) \(h.uri)")
        case .body(let b):
            parts.append("body \(String(buffer: b))")
        case .end(let t):
            parts.append("end" + (t.map { " " + $0.map { "\($0.name)=\($0.value)" }.joined(separator: ",") } ?? ""))
        }
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let f = error as? HTTP1RequestParser.Failure { errors.append(f) }
    }
}

private struct Harness {
    let channel = EmbeddedChannel()
    let reads = ReadCounter()
    let recorder = Recorder()

    init() throws {
        try channel.pipeline.syncOperations.addHandlers([reads, HTTP1ServerCodec(maxHeadBytes: 1024, maxFields: 10), recorder])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    func send(_ s: String) throws { try channel.writeInbound(ByteBuffer(string: s)) }

    func respond(_ head: HTTPResponseHead, body: [String] = [], trailers: HTTPHeaders? = nil) throws {
        try channel.writeOutbound(HTTP1ServerCodec.Part.head(head))
        for b in body { try channel.writeOutbound(HTTP1ServerCodec.Part.body(.byteBuffer(ByteBuffer(string: b)))) }
        try channel.writeOutbound(HTTP1ServerCodec.Part.end(trailers))
    }

    /// Everything written to the client so far, as one string.
    func written() throws -> String {
        var out = ""
        while let part = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let b) = part { out += String(buffer: b) }
        }
        return out
    }
}

private func ok(_ headers: [(String, String)] = [], status: HTTPResponseStatus = .ok, version: HTTPVersion = .http1_1) -> HTTPResponseHead {
    HTTPResponseHead(version: version, status: status, headers: HTTPHeaders(headers))
}

@Suite struct HTTP1ServerCodecTests {
    @Test func aRequestGoesUpAndItsResponseIsWrittenAsGiven() throws {
        let h = try Harness()
        try h.send("GET /a?b=1 HTTP/1.1\r\nHost: web\r\nUser-Agent: a-rather-long-agent-name/1.0\r\n\r\n")
        #expect(h.recorder.parts == ["head GET /a?b=1", "end"])
        #expect(h.recorder.heads.first?.headers.map { "\($0.name): \($0.value)" } == ["Host: web", "User-Agent: a-rather-long-agent-name/1.0"])
        #expect(h.recorder.heads.first?.isKeepAlive == true)
        try h.respond(ok([("content-length", "2"), ("x-a", "b")]), body: ["ok"])
        #expect(try h.written() == "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok")
    }

    /// A body without a length is chunked on HTTP/1.1, with trailers; on HTTP/1.0 it runs
    /// to the connection's close. A stray Transfer-Encoding is replaced, never doubled.
    @Test func responsesAreFramedTheWayTheirHeadsAllow() throws {
        let h = try Harness()
        try h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try h.respond(ok([("Transfer-Encoding", "gzip")]), body: ["hello", "", "world!"], trailers: HTTPHeaders([("grpc-status", "0")]))
        #expect(try h.written() == "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\nworld!\r\n0\r\ngrpc-status: 0\r\n\r\n")

        try h.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        try h.respond(ok(version: .http1_0), body: ["raw"])
        #expect(try h.written() == "HTTP/1.0 200 OK\r\n\r\nraw")
    }

    @Test func noBodyIsWrittenForHeadOr204Or304() throws {
        let h = try Harness()
        try h.send("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        // The length a GET would have is kept; no body goes out, and none is framed.
        try h.respond(ok([("content-length", "5")]))
        #expect(try h.written() == "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")

        try h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try h.respond(ok([("content-length", "0"), ("transfer-encoding", "chunked"), ("etag", "x")], status: .notModified))
        #expect(try h.written() == "HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n")

        try h.send("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n")
        try h.respond(ok(status: .noContent))
        #expect(try h.written() == "HTTP/1.1 204 No Content\r\n\r\n")
    }

    /// One request at a time: the next request's bytes wait, and no more is read from the
    /// client, until the response before it is written; then it is served.
    @Test func pipelinedRequestsWaitForTheResponseBefore() throws {
        let h = try Harness()
        let before = h.reads.reads
        try h.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(h.recorder.parts == ["head GET /1", "end"])
        h.channel.read()
        #expect(h.reads.reads == before, "a read while a response is owed")
        try h.respond(ok([("content-length", "0")]))
        h.channel.embeddedEventLoop.run()
        #expect(h.recorder.parts == ["head GET /1", "end", "head POST /2", "body abc", "end"])
        #expect(h.reads.reads == before, "the held read goes out only when no response is owed")
        try h.respond(ok([("content-length", "0")]))
        h.channel.embeddedEventLoop.run()
        #expect(h.recorder.parts.suffix(2) == ["head GET /3", "end"])
        try h.respond(ok([("content-length", "0")]))
        h.channel.embeddedEventLoop.run()
        #expect(h.reads.reads == before + 1)
    }

    /// A keep-alive client sends nothing while its response is owed, so reading goes on
    /// (holding it costs two epoll_ctl calls per request); once bytes of a next request
    /// are here, reads wait for the response.
    @Test func readsGoOnWhileAResponseIsOwedUntilMoreBytesCome() throws {
        let h = try Harness()
        try h.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        let before = h.reads.reads
        h.channel.read()
        #expect(h.reads.reads == before + 1)
        try h.send("GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        h.channel.read()
        #expect(h.reads.reads == before + 1, "bytes of the next request are held: no more reads")
        #expect(h.recorder.parts == ["head GET /1", "end"])
        try h.respond(ok([("content-length", "0")]))
        h.channel.embeddedEventLoop.run()
        #expect(h.recorder.parts == ["head GET /1", "end", "head GET /2", "end"])
    }

    /// A client's FIN: the requests it sent are answered, in order, then the connection
    /// closes — at once when nothing is owed or a request can no longer complete.
    @Test func aHalfClosedClientIsAnsweredThenClosed() throws {
        let h = try Harness()
        try h.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(h.channel.isActive)
        try h.respond(ok([("content-length", "1")]), body: ["1"])
        h.channel.embeddedEventLoop.run()
        #expect(h.channel.isActive, "the second request is still owed its answer")
        #expect(h.recorder.parts == ["head GET /1", "end", "head GET /2", "end"])
        try h.respond(ok([("content-length", "1")]), body: ["2"])
        h.channel.embeddedEventLoop.run()
        #expect(!h.channel.isActive)
        #expect(try h.written() == "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2")

        let idle = try Harness()
        try idle.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        try idle.respond(ok([("content-length", "0")]))
        idle.channel.embeddedEventLoop.run()
        idle.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        idle.channel.embeddedEventLoop.run()
        #expect(!idle.channel.isActive, "an idle keep-alive connection closes on FIN")

        let cut = try Harness()
        try cut.send("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        cut.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        cut.channel.embeddedEventLoop.run()
        #expect(!cut.channel.isActive, "a body cut short can never complete")
        #expect(cut.recorder.parts == ["head POST /up", "body abc"])
    }

    /// A connection closing after its response waits for the response to go out, but a
    /// client that never reads it is closed after the drain timeout.
    @Test func aClosingConnectionThatCannotWriteIsClosedAfterTheDrainTimeout() throws {
        let channel = EmbeddedChannel()
        let stall = StallWrites()
        try channel.pipeline.syncOperations.addHandlers([stall, HTTP1ServerCodec(maxHeadBytes: 1024, maxFields: 10, drainTimeout: .seconds(3)),
                                                         Recorder()])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        // Written as the proxy handler writes (no waiting: these writes never complete).
        channel.write(HTTP1ServerCodec.Part.head(ok([("content-length", "2")])), promise: nil)
        channel.write(HTTP1ServerCodec.Part.body(.byteBuffer(ByteBuffer(string: "ok"))), promise: nil)
        channel.writeAndFlush(HTTP1ServerCodec.Part.end(nil), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(channel.isActive, "the response has not gone out: the close waits")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive, "nothing went out for the drain timeout: closed")
        #expect(stall.held > 0)
    }

    /// A response given before the request's body is all in (a local reply): the rest of
    /// the body is still read, then the next request.
    @Test func anEarlyResponseLetsTheRestOfTheRequestBeRead() throws {
        let h = try Harness()
        try h.send("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        try h.respond(ok([("content-length", "0")], status: .forbidden))
        try h.send("0\r\nX-Sum: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(h.recorder.parts == ["head POST /up", "body abc", "end X-Sum=1", "head GET /next", "end"])
    }

    @Test func twoHostFieldsAreRefused() throws {
        let h = try Harness()
        try h.send("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        #expect(h.recorder.parts.isEmpty)
        #expect(h.recorder.errors == [.multipleHosts])
        #expect(HTTP1RequestParser.Failure.multipleHosts.status == .badRequest)
    }

    /// After a parse error nothing more is read as a request: the proxy answers and closes.
    @Test func nothingIsParsedAfterAnError() throws {
        let h = try Harness()
        try h.send("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        try h.send("GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(h.recorder.parts.isEmpty)
        #expect(h.recorder.errors == [.contentLengthWithTransferEncoding])
    }

    /// What follows a request to switch protocols is not HTTP/1: never parsed as requests.
    @Test func bytesAfterAnUpgradeRequestAreNotRequests() throws {
        for request in ["GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"] {
            let h = try Harness()
            try h.send(request + "GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n")
            try h.respond(ok([("content-length", "0")], status: .notFound))
            h.channel.embeddedEventLoop.run()
            try h.send("GET /later HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(h.recorder.parts.count == 2, "\(h.recorder.parts)")
            #expect(h.recorder.parts.last == "end")
        }
    }

    /// An upstream's head forwarded from its bytes is the response the NIO head of the same
    /// rewrite gives (what HTTP/2 clients are sent), for every framing: the same fields in
    /// the same order, hop-by-hop ones dropped, the codec's framing fields.
    @Test func aForwardedResponseHeadIsTheResponseItsRewriteDescribes() throws {
        let cases: [(HTTPMethod, String, String)] = [
            (.GET, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 2\r\nx-a:1\r\n\r\n", "HTTP/1.1"),
            (.GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nx-hop: 1\r\nKeep-Alive: 5\r\n\r\n", "HTTP/1.1"),
            (.GET, "HTTP/1.1 200 OK\r\nx-b: 2\r\n\r\n", "HTTP/1.0"),
            (.HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", "HTTP/1.1"),
            (.GET, "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-c: 3\r\n\r\n", "HTTP/1.1"),
            (.GET, "HTTP/1.1 503 Whatever\r\ncontent-length: 0\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\n", "HTTP/1.1"),
        ]
        for (method, response, version) in cases {
            var parser = HTTP1ResponseParser()
            parser.expect(method)
            var bytes = ByteBuffer(string: response)
            guard case .head(let raw)? = try parser.parse(&bytes) else {
                Issue.record("no head in \(response.debugDescription)")
                continue
            }
            let nio = raw.nioHead()
            var r = HeadRewrite(received: nio.headers)
            r.replaceOrAdd(name: "x-a", value: "set")
            r.add(name: "set-cookie", value: "c=3")
            r.replaceOrAdd(name: "connection", value: "close")
            let minor = version == "HTTP/1.0" ? 0 : 1
            func written(_ part: HTTP1ServerCodec.Part) throws -> String {
                let h = try Harness()
                try h.send("\(method.rawValue) / \(version)\r\nhost: a\r\n\r\n")
                try h.channel.writeOutbound(part)
                return try h.written()
            }
            let forwarded = try written(.forwarded(raw, r, status: nio.status, minorVersion: minor))
            let viaNIO = try written(.head(HTTPResponseHead(version: minor == 0 ? .http1_0 : .http1_1, status: nio.status, headers: r.headers())))
            #expect(parseResponses(forwarded, methods: [method]).first == parseResponses(viaNIO, methods: [method]).first, "\(response.debugDescription)")
            #expect(!forwarded.lowercased().contains("x-hop") && !forwarded.contains("keep-alive"), "\(forwarded.debugDescription)")
        }
    }
}

/// Takes writes and never completes them: a client that does not read.
private final class StallWrites: ChannelOutboundHandler {
    typealias OutboundOut = IOData
    typealias OutboundIn = IOData
    var held = 0
    private var promises: [EventLoopPromise<Void>] = []
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        held += 1
        if let promise { promises.append(promise) }
    }
    func flush(context: ChannelHandlerContext) {}
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        for p in promises { p.fail(ChannelError.ioOnClosedChannel) }
        promises = []
        context.close(mode: mode, promise: promise)
    }
}
