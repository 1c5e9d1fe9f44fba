import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import WeftProxy

@Suite struct HTTP1ResponseParserTests {
    @Test func bodiesByLengthChunksAndCloseReadTheSameHoweverSplit() {
        let stream = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello"
            + "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
            + "HTTP/1.1 200\r\n\r\nto the end"
        let expected = ["200 OK [Content-Length:5,X-A:b]", "body hello", "end", "404 Not Found [Transfer-Encoding:chunked]", "body abc",
                        "end Grpc-Status", "200  [] close", "body to the end", "|", "end"]
        #expect(parseResponses(stream, close: true) == expected)
        for piece in 1...7 {
            #expect(parseResponses(stream, piece: piece, close: true) == expected, "piece \(piece)")
        }
    }

    /// No body for HEAD, 204 and 304 whatever the head says; interim 1xx are skipped.
    @Test func framingFollowsTheRequestAndStatus() {
        #expect(parseResponses("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"
            + "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n", methods: [.HEAD, .GET, .GET])
            == ["200 OK [Content-Length:5]", "end", "204 No Content [Content-Length:3]", "end", "304 Not Modified []", "end"])
    }

    /// After a 101 (or a CONNECT's 2xx) the bytes are another protocol's: never a response.
    @Test func aSwitchEndsTheResponses() {
        #expect(parseResponses("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
            == ["101 Switching Protocols [Upgrade:websocket] close", "end"])
        #expect(parseResponses("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", methods: [.CONNECT])
            == ["200 Connection established [] close", "end"])
    }

    @Test func connectionManagementFollowsTheVersion() {
        #expect(parseResponses("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") == ["200 OK [Connection:close,Content-Length:0] close", "end"])
        #expect(parseResponses("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") == ["200 OK [Content-Length:0] close", "end"])
        #expect(parseResponses("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
            == ["200 OK [Connection:keep-alive,Content-Length:0]", "end"])
    }

    /// Responses a pooled connection could be desynchronised by are refused, not guessed at.
    @Test func ambiguousFramingIsRefused() {
        let refused: [(String, HTTP1RequestParser.Failure)] = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", .contentLengthWithTransferEncoding),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", .badContentLength),
            ("HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n", .badContentLength),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .badTransferEncoding),
            ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", .badTransferEncoding),
            ("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", .badLineEnding),
            ("HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", .obsFold),
            ("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", .whitespaceBeforeColon),
            ("HTTP/2 200 OK\r\n\r\n", .badVersion),
            ("HTTP/1.1 20 OK\r\n\r\n", .badStatusLine),
            ("HTTP/1.1 099 Low\r\n\r\n", .badStatusLine),
            ("HTTP/1.1 404HStr Not Found\r\n\r\n", .badStatusLine),
            ("HTTP/1.0 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n", .badStatusLine),
            ("HTTP/1.1 200 O\u{1}K\r\n\r\n", .badStatusLine),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .badChunk),
        ]
        for (text, failure) in refused {
            #expect(parseResponses(text).last == "! \(failure)", "\(text.debugDescription)")
        }
        // Also where no body follows: a 2xx to CONNECT, a HEAD's answer (fuzz-http1-response
        // found weft taking the first while llhttp refused it).
        for method in [HTTPMethod.CONNECT, .HEAD] {
            #expect(parseResponses("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", methods: [method]).last
                == "! contentLengthWithTransferEncoding", "\(method)")
        }
    }
}

/// An upstream connection's codec on an EmbeddedChannel: what it writes, what it reads.
private struct ClientHarness {
    let channel: EmbeddedChannel

    init() throws {
        channel = EmbeddedChannel(handler: HTTP1ClientCodec())
    }

    func send(_ head: HTTPRequestHead, body: [String] = [], trailers: HTTPHeaders? = nil) throws -> String {
        try send(.head(head), body: body, trailers: trailers)
    }

    func send(_ head: HTTP1ClientCodec.RequestPart, body: [String] = [], trailers: HTTPHeaders? = nil) throws -> String {
        try channel.writeOutbound(head)
        for b in body { try channel.writeOutbound(HTTP1ClientCodec.RequestPart.body(.byteBuffer(ByteBuffer(string: b)))) }
        try channel.writeOutbound(HTTP1ClientCodec.RequestPart.end(trailers))
        var out = ""
        while let part = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let b) = part { out += String(buffer: b) }
        }
        return out
    }

    /// The response parts read so far.
    func parts() throws -> [String] {
        var out: [String] = []
        while let part = try channel.readInbound(as: HTTP1ClientCodec.ResponsePart.self) {
            switch part {
            case .received(let raw):
                let h = raw.nioHead()
                out.append("\(h.status.code) \(h.status.reasonPhrase) " + h.headers.map { "\($0.name)=\($0.value)" }.joined(separator: ","))
            case .head(let h): out.append("unexpected NIO head \(h.status.code)")
            case .block(_, let status): out.append("unexpected HTTP/2 block \(status)")
            case .body(let b): out.append("body " + String(buffer: b))
            case .end: out.append("end")
            }
        }
        return out
    }
}

private func request(_ method: HTTPMethod, _ uri: String = "/", _ headers: [(String, String)] = [("host", "up")]) -> HTTPRequestHead {
    HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))
}

@Suite struct HTTP1ClientCodecTests {
    @Test func requestsAreWrittenAsGivenAndFramedAsNIOFramesThem() throws {
        let h = try ClientHarness()
        #expect(try h.send(request(.GET, "/a?b", [("host", "up"), ("x-request-id", "1")])) == "GET /a?b HTTP/1.1\r\nhost: up\r\nx-request-id: 1\r\n\r\n")
        #expect(try h.send(request(.POST, "/p", [("host", "up"), ("content-length", "2")]), body: ["hi"])
            == "POST /p HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\nhi")
        // A POST without a length is chunked; an empty chunk is not written (it would end the body).
        #expect(try h.send(request(.POST, "/p"), body: ["abc", ""], trailers: HTTPHeaders([("x-sum", "1")]))
            == "POST /p HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n")
        #expect(try h.send(request(.GET, "/g", [("host", "up"), ("transfer-encoding", "chunked")]), body: ["z"])
            == "GET /g HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
        #expect(try h.send(request(.TRACE, "/t", [("host", "up"), ("content-length", "0")])) == "TRACE /t HTTP/1.1\r\nhost: up\r\n\r\n")
    }

    /// A field or target that would split the request in two is never written.
    @Test func fieldsThatCouldSplitARequestAreNotSent() throws {
        for head in [request(.GET, "/", [("host", "up"), ("x", "a\r\nInjected: 1")]), request(.GET, "/", [("bad name", "v")]),
                     request(.GET, "/", [("x", "nul\u{0}")]), request(.GET, "/a b")] {
            let h = try ClientHarness()
            #expect(throws: (any Error).self, "\(head)") { try h.channel.writeOutbound(HTTP1ClientCodec.RequestPart.head(head)) }
            #expect(try h.channel.readOutbound(as: IOData.self) == nil, "\(head)")
        }
    }

    /// A known status gets its standard reason phrase (as from NIO's decoder).
    @Test func responsesGoUpAndAHeadResponseHasNoBody() throws {
        let h = try ClientHarness()
        _ = try h.send(request(.HEAD))
        try h.channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"))
        _ = try h.send(request(.GET))
        try h.channel.writeInbound(ByteBuffer(string: "HTTP/1.1 201 Made It\r\ncontent-length: 4\r\n\r\nbody"))
        #expect(try h.parts() == ["200 OK content-length=4", "end", "201 Created content-length=4", "body body", "end"])
    }

    /// A body that runs to the close ends when the connection does.
    @Test func aCloseDelimitedBodyEndsAtTheClose() throws {
        let h = try ClientHarness()
        _ = try h.send(request(.GET))
        try h.channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\nsome"))
        try h.channel.close().wait()
        #expect(try h.parts() == ["200 OK ", "body some", "end"])
    }

    /// The bytes after a 101 go on to what replaces the codec (a WebSocket's first frames).
    @Test func bytesAfterA101AreHandedOnWhenTheCodecLeaves() throws {
        let h = try ClientHarness()
        _ = try h.send(request(.GET, "/ws", [("host", "up"), ("connection", "Upgrade"), ("upgrade", "websocket")]))
        try h.channel.writeInbound(ByteBuffer(string: "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nframe1"))
        try h.channel.writeInbound(ByteBuffer(string: "frame2"))
        #expect(try h.parts() == ["101 Switching Protocols upgrade=websocket", "end"])
        let codec = try h.channel.pipeline.syncOperations.context(handlerType: HTTP1ClientCodec.self)
        try h.channel.pipeline.syncOperations.removeHandler(context: codec).wait()
        #expect(try h.channel.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == "frame1frame2")
    }

    @Test func aMalformedResponseIsAnError() throws {
        let h = try ClientHarness()
        _ = try h.send(request(.GET))
        #expect(throws: HTTP1RequestParser.Failure.badContentLength) {
            try h.channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))
        }
        #expect(try h.parts().isEmpty)
    }

    /// A head forwarded from received bytes is the request the NIO head of the same rewrite
    /// gives (what HTTP/2 upstreams and mirrors are sent): the same fields in the same
    /// order, hop-by-hop ones and those Connection names dropped, `te: trailers` kept,
    /// framing by the same rules.
    @Test func aForwardedHeadIsTheRequestItsRewriteDescribes() throws {
        let received = [
            "GET /a HTTP/1.1\r\nHost: c\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
            "GET /a HTTP/1.1\r\nhost: c\r\nConnection: keep-alive, X-Secret\r\nx-secret: s\r\nKeep-Alive: 5\r\nte: trailers\r\nx-a:1\r\nx-b:  2  \r\n\r\n",
            "POST /p HTTP/1.1\r\nhost: c\r\ncontent-length: 3\r\nx-request-id: r1\r\n\r\n",
            "POST /p HTTP/1.1\r\nhost: c\r\ntransfer-encoding: chunked\r\nTE: gzip\r\nupgrade: h2c\r\n\r\n",
            "TRACE /t HTTP/1.1\r\nhost: c\r\ncontent-length: 0\r\n\r\n",
            "GET /c HTTP/1.1\r\nhost: c\r\ncookie: a=1\r\nx-forwarded-client-cert: forged\r\ncookie: b=2\r\n\r\n",
        ]
        for text in received {
            var parser = HTTP1RequestParser()
            var bytes = ByteBuffer(string: text)
            guard case .head(let raw)? = try parser.parse(&bytes) else {
                Issue.record("no head in \(text.debugDescription)")
                continue
            }
            let nio = raw.nioHead()
            var r = HeadRewrite(received: nio.headers, target: "/routed")
            r.replaceOrAdd(name: "host", value: "svc")
            r.remove(name: "x-forwarded-client-cert")
            r.add(name: "x-route", value: "1")
            r.replaceOrAdd(name: "x-a", value: "set")
            let cookies = r.values("cookie")
            if cookies.count > 1 { r.replaceOrAdd(name: "cookie", value: cookies.joined(separator: "; ")) }
            let forwarded = try ClientHarness().send(.forwarded(raw, r, method: nio.method))
            let viaNIO = try ClientHarness().send(.head(HTTPRequestHead(version: .http1_1, method: nio.method, uri: r.target, headers: r.headers())))
            #expect(try fields(forwarded) == fields(viaNIO), "\(text.debugDescription)")
            #expect(!forwarded.lowercased().contains("secret") && !forwarded.contains("keep-alive") && !forwarded.contains("forged"))
        }
        // Kept fields go out as they came, in one piece.
        var parser = HTTP1RequestParser()
        var bytes = ByteBuffer(string: received[0])
        guard case .head(let raw)? = try parser.parse(&bytes) else { return }
        var r = HeadRewrite(received: raw.nioHead().headers, target: "/a")
        r.add(name: "x-request-id", value: "7")
        #expect(try ClientHarness().send(.forwarded(raw, r, method: .GET))
            == "GET /a HTTP/1.1\r\nHost: c\r\nUser-Agent: t\r\nAccept: */*\r\nx-request-id: 7\r\n\r\n")
    }

    /// The request line and fields of a written request, as weft's parser reads them.
    private func fields(_ text: String) throws -> [String] {
        var parser = HTTP1RequestParser()
        var bytes = ByteBuffer(string: text)
        guard case .head(let h)? = try parser.parse(&bytes) else { return ["no head"] }
        let head = h.nioHead()
        return ["\(head.method) \(head.uri)"] + head.headers.map { "\($0.name)=\($0.value)" }
    }
}
