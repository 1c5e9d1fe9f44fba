import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import Tracing
import WeftConfig

/// Entry points for the libFuzzer harnesses in Fuzz/ — never used by the agent. Each
/// feeds attacker-controlled bytes through the very code a client connection meets, on an
/// embedded event loop: any crash, trap or sanitizer report is a bug; refusals are the
/// expected outcome.
public enum ProxyFuzzing {
    /// A request's trace fields (W3C and B3, as a client may send them) → the parser and
    /// the fields the proxy sends on, with a sampling tracer: every id it reads is
    /// lowercase hex of the right length, and nothing it sends on could break a head.
    /// The bytes are NUL-separated values of traceparent, tracestate, b3, x-b3-traceid,
    /// x-b3-spanid, x-b3-sampled, x-b3-flags, in that order.
    public static func traceContext(_ data: [UInt8]) {
        var headers = HTTPHeaders()
        let names = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"]
        for (name, value) in zip(names, data.split(separator: 0, omittingEmptySubsequences: false)) where !value.isEmpty {
            // What reaches the proxy has passed the head parsers: no CR, LF or NUL.
            guard !value.contains(where: { $0 == 13 || $0 == 10 }) else { return }
            headers.add(name: name, value: String(decoding: value, as: UTF8.self))
        }
        func hex(_ s: String, _ n: Int) -> Bool { s.utf8.count == n && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) } }
        if let c = TraceContextIn.parse(headers) {
            precondition(hex(c.traceID, 32) && hex(c.spanID, 16), "parsed ids not hex: \(c)")
        }
        var bits: UInt64 = 0x9E37_79B9_7F4A_7C15
        for percent in [0.0, 100.0] {
            let t = RequestTrace.begin(TracingSettings(tracer: NoOpTracer(), samplingPercentage: percent, node: "fuzz"), headers: headers,
                                       name: "fuzz", kind: .client, random: { bits &+= 0x9E37_79B9_7F4A_7C15; return bits })
            for (name, value) in t?.outgoing ?? [] {
                precondition(TraceContextIn.fields.contains(name), "sent a field that is not a trace field: \(name)")
                precondition(value.utf8.allSatisfy { $0 >= 0x20 && $0 != 0x7f }, "sent a value a head cannot carry: \(value)")
            }
        }
    }

    /// The protocol sniffer: `classify` on every prefix of the bytes, then the handler
    /// itself fed the bytes in pieces (the first byte picks their size).
    public static func sniff(_ data: [UInt8]) {
        var buffer = ByteBuffer(bytes: data)
        for n in 0...min(data.count, 64) {
            _ = ProtocolSniffHandler.classify(buffer.getSlice(at: 0, length: n)!.readableBytesView)
        }
        let ch = EmbeddedChannel()
        let decided = NIOLockedValueBox(0)
        _ = try? ch.pipeline.syncOperations.addHandler(ProtocolSniffHandler { _, _ in decided.withLockedValue { $0 += 1 } })
        let piece = max(1, Int(data.first ?? 1) % 32)
        while buffer.readableBytes > 0, let chunk = buffer.readSlice(length: min(piece, buffer.readableBytes)) {
            if (try? ch.writeInbound(chunk)) == nil { break }
        }
        ch.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        if decided.withLockedValue({ $0 }) > 1 { fatalError("the sniffer decided twice") }
        _ = try? ch.finish(acceptAlreadyClosed: true)
    }

    /// A client's HTTP/1 bytes at the destination end of the tunnel: weft's codec with
    /// the proxy's limits, the proxy's exchanges — hostile-input
    /// checks, path normalization, authorization, routing and local replies (the upstream
    /// cannot be dialed on an embedded loop, so forwarded requests end in 503).
    public static func http1(_ data: [UInt8]) {
        let ch = EmbeddedChannel()
        let loop = ch.embeddedEventLoop
        let conn = fixtureConnection()
        _ = try? ch.pipeline.syncOperations.addHandlers(ProxyRuntime.http1Handlers(conn, headerTimeout: .seconds(10), idleTimeout: .hours(1)))
        // An embedded channel is inactive until connected, and the loop below feeds only
        // an active one (a closed connection reads no more).
        _ = try? ch.connect(to: SocketAddress(ipAddress: "10.9.9.9", port: 40000)).wait()
        var buffer = ByteBuffer(bytes: data)
        let piece = max(1, Int(data.first ?? 1) % 64)
        while buffer.readableBytes > 0, let chunk = buffer.readSlice(length: min(piece, buffer.readableBytes)), ch.isActive {
            if (try? ch.writeInbound(chunk)) == nil { break }
            loop.run()
        }
        // Let every timer (retries, timeouts) fire, then read whatever was answered.
        loop.advanceTime(by: .minutes(10))
        while let _ = try? ch.readOutbound(as: ByteBuffer.self) {}
        _ = try? ch.finish(acceptAlreadyClosed: true)
    }

    /// A client's HTTP/2 connection at a tunnel's destination: NIO's handler with the
    /// proxy's limits, then the proxy's own frame-level session (HTTP2ServerSession): its
    /// stream bookkeeping, flow control, request heads made from header blocks, the
    /// exchanges (hostile-input checks, normalization, authorization, routing, local
    /// replies; the upstream cannot be dialed on an embedded loop, so forwarded requests
    /// end in 503). The bytes are a program of frames — HEADERS from a vocabulary of
    /// fields that matter (pseudo-fields, odd methods and paths, framing fields), DATA,
    /// RST_STREAM, WINDOW_UPDATE, SETTINGS, PING, and raw bytes — so that fuzzing reaches
    /// the session rather than HPACK's refusals.
    ///
    /// An odd first byte serves the frames as a tunnel requests connection instead (ALPN
    /// weft-h2, from a verified peer agent): each stream's block checked by the session
    /// itself rather than NIO, its target and source fields resolved
    /// (TunnelRequestTargets), refusals answered on the stream.
    public static func http2(_ data: [UInt8]) {
        let ch = EmbeddedChannel()
        let loop = ch.embeddedEventLoop
        let conn = fixtureConnection()
        _ = try? ch.connect(to: SocketAddress(ipAddress: "10.9.9.9", port: 40000)).wait()
        if (data.first ?? 0) & 1 == 1 {
            let f = tunnelFixture
            let peer = PeerIdentity()
            peer.set("spiffe://cluster.local/ns/default/sa/frontend", node: "other", chain: [])
            let closeOnError = CloseOnError { _ in }
            var handlers = TunnelListener.requestHandlers(runtime: f.runtime, peer: peer, remote: SocketKey(IPAddress("10.9.9.9")!, 40000),
                                                          loop: conn.loop, eventLoop: loop, closeOnError: closeOnError)
            handlers.append(closeOnError)
            _ = try? ch.pipeline.syncOperations.addHandlers(handlers)
        } else {
            _ = try? ch.pipeline.syncOperations.addHandlers(ProxyRuntime.http2Handlers(conn, eventLoop: loop, idleTimeout: .hours(1)) { _ in })
        }
        var out = ByteBuffer(string: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        frame(&out, type: 4, flags: 0, stream: 0, payload: ByteBuffer())
        _ = try? ch.writeInbound(out)
        var program = FrameProgram(data)
        while ch.isActive, let bytes = program.next() {
            if (try? ch.writeInbound(bytes)) == nil { break }
            loop.run()
            while let _ = try? ch.readOutbound(as: IOData.self) {}
        }
        loop.advanceTime(by: .minutes(10))
        while let _ = try? ch.readOutbound(as: IOData.self) {}
        _ = try? ch.finish(acceptAlreadyClosed: true)
    }

    /// A connection delivered through the tunnel to the fixture's workload, by a verified
    /// peer, with the proxy's timeouts: what the HTTP/1 and HTTP/2 harnesses serve.
    static func fixtureConnection() -> ConnectionContext {
        let f = fixture
        let state = LoopState(dialer: Dialer(settings: UpstreamSettings(mark: 0), tunnels: nil), idleTimeout: .hours(1),
                              streamIdleTimeout: .minutes(5), requestTimeout: .seconds(30)) { _ in }
        return ConnectionContext(id: 1, client: SocketKey(IPAddress("10.9.9.9")!, 40000),
                                 origin: ConnectionOrigin(destination: f.target.cluster.endpoints[0].socket, cgroupID: 0),
                                 listener: f.target.listener, source: nil, tables: f.tables, loop: state, clusters: ClusterRegistry(),
                                 inbound: InboundPeer(identity: "spiffe://cluster.local/ns/default/sa/frontend", sourceWorkload: nil,
                                                      target: f.target, path: .tunnel),
                                 live: NIOLockedValueBox(f.tables), sessions: f.sessions)
    }

    /// Writes one HTTP/2 frame (RFC 9113 §4.1).
    static func frame(_ out: inout ByteBuffer, type: UInt8, flags: UInt8, stream: UInt32, payload: ByteBuffer) {
        let n = payload.readableBytes
        out.writeInteger(UInt8(truncatingIfNeeded: n >> 16))
        out.writeInteger(UInt16(truncatingIfNeeded: n))
        out.writeInteger(type)
        out.writeInteger(flags)
        out.writeInteger(stream & 0x7fff_ffff)
        var p = payload
        out.writeBuffer(&p)
    }

    /// Turns fuzz bytes into HTTP/2 frames a client could send.
    struct FrameProgram {
        private var input: ArraySlice<UInt8>
        private var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        static let methods = ["GET", "POST", "get", "DELETE", "CONNECT", "HEAD", "OPTIONS", "PUT"]
        static let paths = ["/", "/admin", "/admin;x", "//admin", "/%2e%2e/admin", "/a/../admin", "*", "/x?y=1", "/%00", "/caf\u{e9}",
                            "/a b", "", "/%2Fadmin"]
        static let authorities = ["web", "admin.web", "admin.web.", "ADMIN.WEB", "10.0.0.10:8080", "", "a\u{7f}b"]
        static let names = ["x-evil", "content-length", "te", "cookie", "host", "x-forwarded-client-cert", "content-type",
                            "grpc-timeout", "x-request-id", "connection", "upgrade", ":status", ":protocol", "Upper",
                            "weft-target", "weft-source", ":method", ":path"]
        static let values = ["1", "0", "trailers", "a=1", "application/grpc", "By=x;URI=spiffe://evil", "websocket", "", "10",
                             "-1", "x\r\ny", "100000", "10.0.0.10:8080", "10.0.0.10:22", "10.0.0.10", "[::1]:8080", "GET"]

        init(_ data: [UInt8]) { input = data[...] }

        private mutating func byte() -> UInt8? { input.popFirst() }

        private mutating func pick<T>(_ from: [T]) -> T { from[Int(byte() ?? 0) % from.count] }

        mutating func next() -> ByteBuffer? {
            guard let op = byte() else { return nil }
            let sel = byte() ?? 0
            // Client stream ids 1…31, now and then 0 or an even (server) one.
            let stream: UInt32 = sel & 0x80 != 0 ? UInt32(sel & 0x1f) : UInt32(sel & 0x0f) * 2 + 1
            let endStream: UInt8 = sel & 0x40 != 0 ? 0x1 : 0
            var out = ByteBuffer()
            switch op % 8 {
            case 0, 1: // HEADERS (a request, or trailers on an open stream)
                var h: [(String, String)] = []
                if op & 0x10 == 0 {
                    h.append((":method", pick(Self.methods)))
                    if op & 0x20 == 0 { h.append((":scheme", "http")) }
                    if op & 0x40 == 0 { h.append((":path", pick(Self.paths))) }
                    if op & 0x80 == 0 { h.append((":authority", pick(Self.authorities))) }
                }
                for _ in 0..<Int(byte() ?? 0) % 5 { h.append((pick(Self.names), pick(Self.values))) }
                var block = ByteBuffer()
                guard (try? encoder.encode(headers: HPACKHeaders(h), to: &block)) != nil else { return out }
                Self.frameOut(&out, type: 1, flags: 0x4 | endStream, stream: stream, payload: block)
            case 2, 3: // DATA
                let n = min(Int(byte() ?? 0) * 64, input.count)
                let body = ByteBuffer(bytes: input.prefix(n))
                input = input.dropFirst(n)
                Self.frameOut(&out, type: 0, flags: endStream, stream: stream, payload: body)
            case 4: // RST_STREAM
                var p = ByteBuffer()
                p.writeInteger(UInt32(byte() ?? 0) % 14)
                Self.frameOut(&out, type: 3, flags: 0, stream: stream, payload: p)
            case 5: // WINDOW_UPDATE (0: a protocol error)
                var p = ByteBuffer()
                p.writeInteger(UInt32(byte() ?? 0) << UInt32((byte() ?? 0) % 24))
                Self.frameOut(&out, type: 8, flags: 0, stream: sel & 0x20 != 0 ? 0 : stream, payload: p)
            case 6: // SETTINGS or PING
                var p = ByteBuffer()
                if sel & 1 == 0 {
                    p.writeInteger(UInt16((byte() ?? 0) % 8))
                    p.writeInteger(UInt32(byte() ?? 0) << 8)
                    Self.frameOut(&out, type: 4, flags: 0, stream: 0, payload: p)
                } else {
                    p.writeInteger(UInt64(byte() ?? 0))
                    Self.frameOut(&out, type: 6, flags: 0, stream: 0, payload: p)
                }
            default: // raw bytes, framing be damned
                let n = min(Int(sel % 32), input.count)
                out.writeBytes(input.prefix(n))
                input = input.dropFirst(n)
            }
            return out
        }

        private static func frameOut(_ out: inout ByteBuffer, type: UInt8, flags: UInt8, stream: UInt32, payload: ByteBuffer) {
            ProxyFuzzing.frame(&out, type: type, flags: flags, stream: stream, payload: payload)
        }
    }

    /// weft's HTTP/1 request parser: the same result however the bytes are split, and
    /// never more lenient than NIO's parser (llhttp) on the same bytes — a head weft
    /// accepts that llhttp refused is a finding (a smuggling gap), except for methods:
    /// llhttp knows a fixed list, weft takes any upper-case token.
    public static func http1Parser(_ data: [UInt8]) {
        let whole = parseStream(data)
        let piece = Int(data.first ?? 0) % 16 + 1
        let split = parseStream(data, piece: piece)
        if whole != split { fatalError("the parser read \(piece)-byte pieces differently: \(whole) vs \(split)") }

        let ch = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder()))
        var heads: [HTTPRequestHead] = []
        var refused: HTTPParserError?
        do {
            try ch.writeInbound(ByteBuffer(bytes: data))
        } catch let e as HTTPParserError {
            refused = e
        } catch {}
        while let part = try? ch.readInbound(as: HTTPServerRequestPart.self) {
            if case .head(let h) = part { heads.append(h) }
        }
        _ = try? ch.finish(acceptAlreadyClosed: true)
        for (h, r) in zip(heads, whole.requests) {
            let fields = h.headers.map { "\($0.name):\(withoutOWS($0.value))" }
            if h.method.rawValue != r.method || h.uri != r.target || fields != r.fields {
                fatalError("weft and llhttp read a head differently: \(r) vs \(h)")
            }
        }
        if let refused, refused != .invalidMethod, whole.requests.count > heads.count {
            fatalError("weft accepted a head llhttp refused (\(refused)): \(whole.requests[heads.count])")
        }
    }

    /// weft's HTTP/1 response parser (what an upstream sends): the same result however the
    /// bytes are split, and never more lenient than NIO's response decoder (llhttp) on the
    /// same bytes — a response head weft accepts that llhttp refused is a finding (a
    /// pooled connection could be desynchronised by it). The first byte picks the method
    /// of the request answered (GET, HEAD, CONNECT) and the read size.
    public static func http1ResponseParser(_ data: [UInt8]) {
        guard let first = data.first else { return }
        let method: HTTPMethod = [.GET, .HEAD, .CONNECT][Int(first % 3)]
        let bytes = Array(data.dropFirst())
        let whole = parseResponses(bytes, methods: [method], close: true)
        let piece = Int(first / 3) % 16 + 1
        let split = parseResponses(bytes, methods: [method], piece: piece, close: true)
        if whole != split { fatalError("the response parser read \(piece)-byte pieces differently: \(whole) vs \(split)") }

        // llhttp, told the same request: the first response's head, or its refusal.
        let ch = EmbeddedChannel(handler: ByteToMessageHandler(HTTPResponseDecoder()))
        _ = try? ch.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: method, uri: "/")))
        var nioHead: HTTPResponseHead?
        var refused = false
        do {
            try ch.writeInbound(ByteBuffer(bytes: bytes))
        } catch {
            refused = true
        }
        if case .head(let h)? = try? ch.readInbound(as: HTTPClientResponsePart.self) { nioHead = h }
        _ = try? ch.finish(acceptAlreadyClosed: true)
        guard let weftHead = whole.first, !weftHead.hasPrefix("!"), !weftHead.hasPrefix("|") else { return }
        guard let h = nioHead else {
            if refused { fatalError("weft accepted a response head llhttp refused: \(weftHead)") }
            return
        }
        if !weftHead.hasPrefix("\(h.status.code) ") {
            fatalError("weft and llhttp read the status differently: \(weftHead) vs \(h.status.code)")
        }
    }

    /// A field value without leading or trailing SP/HTAB (RFC 9110 §5.5): llhttp keeps a
    /// trailing HTAB in the value, weft's parser does not.
    static func withoutOWS(_ v: String) -> String {
        var u = Substring(v).utf8
        while let f = u.first, f == 32 || f == 9 { u = u.dropFirst() }
        while let l = u.last, l == 32 || l == 9 { u = u.dropLast() }
        return String(Substring(u))
    }

    /// A workload of this node under AuthorizationPolicy, with a routed service in front.
    private struct Fixture: @unchecked Sendable {
        let tables: ProxyTables
        let target: InboundTarget
        let sessions: LiveSessions
    }

    /// A runtime holding the fixture's tables, for what a tunnel connection resolves
    /// against (one event loop thread, never given work).
    private struct TunnelFixture: @unchecked Sendable {
        let runtime: ProxyRuntime
    }

    private static let tunnelFixture: TunnelFixture = {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        let runtime = ProxyRuntime(settings: .init(port: 0, agentMark: 0, threads: 1), logger: logger)
        runtime.update(fixture.tables)
        return TunnelFixture(runtime: runtime)
    }()

    private static let fixture: Fixture = {
        let yaml = """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: web, namespace: default}
        spec:
          hosts: [web.default.svc.cluster.local]
          addresses: [10.96.0.10]
          ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
          resolution: STATIC
          workloadSelector: {labels: {app: web}}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata:
          name: web
          namespace: default
          annotations: {weft.io/node: fuzz, weft.io/cgroup: web}
        spec: {address: 10.0.0.10, labels: {app: web}, serviceAccount: web}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: web, namespace: default}
        spec:
          selector: {matchLabels: {app: web}}
          action: DENY
          rules:
          - to: [{operation: {paths: ["/admin*"], methods: ["DELETE"], hosts: ["admin.web"]}}]
          - when: [{key: "request.headers[x-evil]", values: ["*"]}]
        """
        let parsed = ConfigLoader.parse(text: yaml, file: "fuzz.yaml")
        guard let snap = try? ConfigLoader.snapshot(parsed, revision: 1) else { fatalError("the fuzz fixture does not validate") }
        let tables = ProxyTables(snapshot: snap, node: "fuzz")
        guard let target = tables.inboundTargets.values.first else { fatalError("the fuzz fixture has no workload port") }
        return Fixture(tables: tables, target: target, sessions: LiveSessions(logger: Logger(label: "fuzz")))
    }()
}
