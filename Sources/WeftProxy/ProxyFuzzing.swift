import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import WeftConfig

/// Entry points for the libFuzzer harnesses in Fuzz/ — never used by the agent. Each
/// feeds attacker-controlled bytes through the very code a client connection meets, on an
/// embedded event loop: any crash, trap or sanitizer report is a bug; refusals are the
/// expected outcome.
public enum ProxyFuzzing {
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
        let f = fixture
        let ch = EmbeddedChannel()
        let loop = ch.embeddedEventLoop
        let state = LoopState(dialer: Dialer(settings: UpstreamSettings(mark: 0), tunnels: nil), idleTimeout: .hours(1),
                              streamIdleTimeout: .minutes(5), requestTimeout: .seconds(30)) { _ in }
        let conn = ConnectionContext(id: 1, client: SocketKey(IPAddress("10.9.9.9")!, 40000),
                                     origin: ConnectionOrigin(destination: f.target.cluster.endpoints[0].socket, cgroupID: 0),
                                     listener: f.target.listener, source: nil, tables: f.tables, loop: state, clusters: ClusterRegistry(),
                                     inbound: InboundPeer(identity: "spiffe://cluster.local/ns/default/sa/frontend", sourceWorkload: nil,
                                                          target: f.target, path: .tunnel),
                                     live: NIOLockedValueBox(f.tables), sessions: f.sessions)
        _ = try? ch.pipeline.syncOperations.addHandlers(OutboundProxy.http1Handlers(conn, headerTimeout: .seconds(10), idleTimeout: .hours(1)))
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
