import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import WeftProxy

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite struct HTTP1RequestParserTests {
    @Test func aKeepAliveGetIsParsedInPlace() {
        let r = parseStream(bytes("GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-Long-Header-Name:  spaced value \t\r\n\r\n"))
        #expect(r.failure == nil)
        #expect(r.requests == [.init(method: "GET", target: "/a?b=1", fields: ["Host:web", "X-Long-Header-Name:spaced value"],
                                     framing: .none, keepAlive: true, complete: true)])
    }

    /// Nothing after a request that closes the connection is read as another request.
    @Test func bytesAfterAClosingRequestAreNotParsed() {
        let r = parseStream(bytes("GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"))
        #expect(r.requests.map(\.target) == ["/a"])
        #expect(r.failure == nil)
    }

    @Test func connectionManagementFollowsTheVersion() {
        #expect(parseStream(bytes("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n")).requests.first?.keepAlive == false)
        #expect(parseStream(bytes("GET / HTTP/1.0\r\n\r\n")).requests.first?.keepAlive == false)
        #expect(parseStream(bytes("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")).requests.first?.keepAlive == true)
    }

    /// Bodies framed by length and by chunks, trailers, leading empty lines and pipelined
    /// requests: the same result however the bytes are split.
    @Test func theResultDoesNotDependOnHowBytesArrive() {
        let stream = bytes("\r\nPOST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
            + "PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5;ext=\"v\\\"w\";x;y=z\r\nhello\r\n1A\r\n" + String(repeating: "z", count: 26)
            + "\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
            + "GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
        let whole = parseStream(stream)
        #expect(whole.failure == nil)
        #expect(whole.requests.map(\.target) == ["/up", "/c", "/last"])
        #expect(whole.requests.map(\.framing) == [.length(11), .chunked, .none])
        #expect(whole.requests[0].body == bytes("hello world"))
        #expect(whole.requests[1].body == bytes("hello" + String(repeating: "z", count: 26)))
        #expect(whole.requests[1].trailers == ["X-Checksum", "X-Other"])
        #expect(whole.requests.allSatisfy { $0.complete })
        for piece in [1, 2, 3, 7, 64] {
            #expect(parseStream(stream, piece: piece) == whole, "split into \(piece)-byte reads")
        }
    }

    /// The README's hostile forms, each refused with the reason (400, or 431 for size).
    @Test(arguments: [
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP1RequestParser.Failure.contentLengthWithTransferEncoding),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", .contentLengthWithTransferEncoding),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", .badContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", .badContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", .badContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", .badContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", .badContentLength),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", .badTransferEncoding),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", .badTransferEncoding),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", .badTransferEncoding),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", .badTransferEncoding),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", .whitespaceBeforeColon),
        ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", .obsFold),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", .badLineEnding),
        ("GET / HTTP/1.1\r\nHost: a\n\r\n", .badLineEnding),
        ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", .badLineEnding),
        ("GET / HTTP/1.1\r\nHost: a\u{0}b\r\n\r\n", .badFieldValue),
        ("GET / HTTP/1.1\r\nHo\u{1}st: a\r\n\r\n", .badFieldName),
        ("GET / HTTP/1.1\r\n: a\r\n\r\n", .badFieldName),
        ("GET / HTTP/1.1\r\nHost\r\n\r\n", .badFieldName),
        ("delete / HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET x/ HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET web:80 HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET ** HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", .badRequestLine),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", .badVersion),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", .badVersion),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", .badVersion),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", .badChunk),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n\r\n", .badChunk),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", .badChunk),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\u{1}\r\nhello\r\n0\r\n\r\n", .badChunk),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", .badChunk),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e}1\r\nhello\r\n0\r\n\r\n", .badChunk),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=\"x\r\nhello\r\n0\r\n\r\n", .badChunk),
    ])
    func hostileFormsAreRefused(_ input: String, _ failure: HTTP1RequestParser.Failure) {
        #expect(parseStream(bytes(input)).failure == failure)
        #expect(parseStream(bytes(input), piece: 1).failure == failure, "fed byte by byte")
        #expect(failure.status == .badRequest)
    }

    /// A bare LF is refused as soon as it arrives, not when (if ever) the head completes.
    @Test func aBareLineFeedIsRefusedBeforeTheHeadEnds() {
        #expect(parseStream(bytes("GET / HTTP/1.1\r\nHost: a\nX-More: ")).failure == .badLineEnding)
    }

    @Test func tooMuchHeadIs431() {
        let many = "GET / HTTP/1.1\r\n" + (0...100).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        #expect(parseStream(bytes(many)).failure == .tooManyFields)
        #expect(HTTP1RequestParser.Failure.tooManyFields.status == .requestHeaderFieldsTooLarge)
        // Over 60 KiB without an end is refused without waiting for one.
        let huge = "GET / HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 61 * 1024)
        #expect(parseStream(bytes(huge)).failure == .headTooLarge)
        #expect(parseStream(bytes(huge), piece: 4096).failure == .headTooLarge)
        #expect(HTTP1RequestParser.Failure.headTooLarge.status == .requestHeaderFieldsTooLarge)
        // 100 fields and just under the limit still pass.
        let hundred = "GET / HTTP/1.1\r\n" + (1...100).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        #expect(parseStream(bytes(hundred)).failure == nil)
    }

    /// For requests both accept, weft's parser reads what NIO's (llhttp) reads.
    @Test(arguments: [
        "GET /x HTTP/1.1\r\nHost: web\r\nAccept: */*\r\nUser-Agent: curl/8\r\n\r\n",
        "\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
        "CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n",
        "GET http://web/abs?q=%20 HTTP/1.1\r\nHost: web\r\nX-Empty:\r\nX-Tabs:\t\tv\t\r\n\r\n",
        "POST /p HTTP/1.0\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi",
        "GET /o HTTP/1.1\r\nHost: web\r\nX-Obs: caf\u{e9}\r\n\r\n",
    ])
    func agreesWithNIOOnWhatBothAccept(_ input: String) throws {
        let ours = parseStream(bytes(input))
        #expect(ours.failure == nil)
        let ch = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder()))
        try ch.writeInbound(ByteBuffer(string: input))
        var heads: [HTTPRequestHead] = []
        while let part = try ch.readInbound(as: HTTPServerRequestPart.self) {
            if case .head(let h) = part { heads.append(h) }
        }
        _ = try ch.finish()
        #expect(heads.count == ours.requests.count)
        for (h, r) in zip(heads, ours.requests) {
            #expect(h.method.rawValue == r.method)
            #expect(h.uri == r.target)
            #expect(h.headers.map { "\($0.name):\(ProxyFuzzing.withoutOWS($0.value))" } == r.fields)
            #expect(h.isKeepAlive == r.keepAlive)
        }
    }
}
