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
    }
}

/// An upstream connection's codec on an EmbeddedChannel: what it writes, what it reads.
private struct ClientHarness {
    let channel: EmbeddedChannel

    init() throws {
        channel = EmbeddedChannel(handler: HTTP1ClientCodec())
    }

    func send(_ head: HTTPRequestHead, body: [String] = [], trailers: HTTPHeaders? = nil) throws -> String {
        try channel.writeOutbound(HTTPClientRequestPart.head(head))
        for b in body { try channel.writeOutbound(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: b)))) }
        try channel.writeOutbound(HTTPClientRequestPart.end(trailers))
        var out = ""
        while let part = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let b) = part { out += String(buffer: b) }
        }
        return out
    }

    /// The response parts read so far.
    func parts() throws -> [String] {
        var out: [String] = []
        while let part = try channel.readInbound(as: HTTPClientResponsePart.self) {
            switch part {
            case .head(let h): out.append("\(h.status.code) \(h.status.reasonPhrase) " + h.headers.map { "\($0.name)=\($0.value)" }.joined(separator: ","))
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
            #expect(throws: (any Error).self, "\(head)") { try h.channel.writeOutbound(HTTPClientRequestPart.head(head)) }
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
}
