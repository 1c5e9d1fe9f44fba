import Foundation
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
import WeftConfig
@testable import WeftProxy

/// Tables of a one-service config: web (VIP 10.96.0.10:80, HTTP) with two labelled
/// endpoints, plus whatever `extra` YAML adds.
func tables(_ extra: String = "") throws -> ProxyTables {
    let yaml = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: web}
    spec:
      hosts: [web.default.svc.cluster.local]
      addresses: [10.96.0.10]
      ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
      resolution: STATIC
      endpoints:
      - {address: 10.1.0.1, labels: {version: v1}}
      - {address: 10.1.0.2, labels: {version: v2}, weight: 3}
    """ + extra
    let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "t.yaml"), revision: 1)
    return ProxyTables(snapshot: snap)
}

let routedWeb = """

---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 80}
      connectionPool: {tcp: {maxConnections: 7}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 200, body: {string: ok}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - match: [{uri: {prefix: /app}}]
    route: [{destination: {host: web, subset: v1}}]
"""

@Suite struct ProxyTablesTests {
    @Test func clustersFollowSubsetsAndPolicyPrecedence() throws {
        let t = try tables(routedWeb)
        let l = try #require(t.listeners[SocketKey(IPAddress("10.96.0.10")!, 80)])
        #expect(l.router != nil && l.port.isHTTP)
        let v1 = try #require(t.cluster(for: Destination(host: "web.default.svc.cluster.local", subset: "v1"), dialedPort: 80))
        #expect(v1.endpoints.map(\.socket.description) == ["10.1.0.1:8080"])
        #expect(v1.loadBalancer == .roundRobin)                 // the rule's, no subset override
        #expect(v1.connectionPool?.maxConnections == 7)         // port level applies to subsets too
        let v2 = try #require(t.cluster(for: Destination(host: "web.default.svc.cluster.local", subset: "v2"), dialedPort: 80))
        #expect(v2.loadBalancer == .leastRequest && v2.endpoints.map(\.weight) == [3])
        #expect(t.cluster(for: Destination(host: "web.default.svc.cluster.local", subset: "v9"), dialedPort: 80) == nil)
        #expect(t.defaultCluster(l)?.endpoints.count == 2)
    }

    @Test func upstreamProtocolIsIstios() throws {
        let web = ClusterKey(host: "web.default.svc.cluster.local", subset: nil, port: 80)
        // An HTTP port: HTTP/1.1 whatever the client speaks.
        #expect(try tables().clusters[web]?.upstreamHTTP2 == false)
        func withPool(_ http: String) throws -> Bool? {
            try tables("\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\n"
                       + "spec:\n  host: web\n  trafficPolicy: {connectionPool: {http: \(http)}}\n").clusters[web]?.upstreamHTTP2
        }
        #expect(try withPool("{h2UpgradePolicy: UPGRADE}") == true)
        #expect(try withPool("{h2UpgradePolicy: DO_NOT_UPGRADE}") == false)
        #expect(try withPool("{useClientProtocol: true}") == nil)
        // useClientProtocol makes the upgrade policy ineffective (Istio's API says so).
        #expect(try withPool("{useClientProtocol: true, h2UpgradePolicy: UPGRADE}") == nil)
        // HTTP2 and gRPC ports: HTTP/2, even under useClientProtocol.
        let g = try tables("""

            ---
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: g}
            spec:
              hosts: [g.default.svc.cluster.local]
              addresses: [10.96.0.11]
              ports:
              - {number: 81, name: h2, protocol: HTTP2}
              - {number: 82, name: grpc, protocol: GRPC}
              - {number: 83, name: grpc-web, protocol: GRPC-Web}
              resolution: STATIC
              endpoints: [{address: 10.1.0.3}]
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: g}
            spec:
              host: g
              trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}
            """)
        for port: UInt16 in [81, 82, 83] {
            #expect(g.clusters[ClusterKey(host: "g.default.svc.cluster.local", subset: nil, port: port)]?.upstreamHTTP2 == true)
        }
    }

    @Test func servicesWithoutL7NeedsAreNotListenersAtAll() throws {
        let t = try tables()
        #expect(t.listeners.isEmpty)        // plain HTTP service: the kernel balances it
        #expect(t.clusters.count == 1)      // but a route elsewhere may still send to it
    }
}

@Suite struct EndpointPickerTests {
    func cluster(_ lb: LoadBalancer, weights: [UInt32] = [1, 2, 3]) -> Cluster {
        Cluster(key: ClusterKey(host: "h", subset: nil, port: 80),
                endpoints: weights.enumerated().map { i, w in Endpoint(socket: SocketKey(IPAddress("10.0.0.\(i + 1)")!, 80), weight: w) },
                loadBalancer: lb, connectionPool: nil, outlierDetection: nil,
                service: ResourceID(kind: "ServiceEntry", namespace: "default", name: "h"))
    }

    @Test func roundRobinIsExactlyWeighted() {
        var p = EndpointPicker()
        let c = cluster(.roundRobin)
        var n: [UInt32: Int] = [:]
        for _ in 0..<600 { n[p.pick(c, hash: nil, random: 0)!.weight, default: 0] += 1 }
        #expect(n == [1: 100, 2: 200, 3: 300])
    }

    @Test func excludedEndpointsAreSkippedUnlessNothingIsLeft() {
        var p = EndpointPicker()
        let c = cluster(.random)
        let all = Set(c.endpoints.map(\.socket))
        for r in stride(from: 0.0, to: 1.0, by: 0.05) {
            #expect(p.pick(c, exclude: [c.endpoints[2].socket], hash: nil, random: r)!.weight != 3)
            #expect(p.pick(c, exclude: all, hash: nil, random: r) != nil)
        }
    }

    @Test func rendezvousIsStickyAndMovesOnlyTheRemovedEndpointsKeys() {
        var p = EndpointPicker()
        let c = cluster(.requestHash(.header("x-user")), weights: [1, 1, 1, 1])
        var before: [UInt64: SocketKey] = [:]
        for k in 0..<2000 { before[UInt64(k)] = p.pick(c, hash: Hashing.fnv1a("user\(k)"), random: 0.3)!.socket }
        for k in 0..<2000 { #expect(p.pick(c, hash: Hashing.fnv1a("user\(k)"), random: 0.9)!.socket == before[UInt64(k)]) }
        #expect(Set(before.values).count == 4)
        let gone = c.endpoints[1].socket
        var moved = 0
        for k in 0..<2000 {
            let now = p.pick(c, exclude: [gone], hash: Hashing.fnv1a("user\(k)"), random: 0.3)!.socket
            if before[UInt64(k)] != gone { #expect(now == before[UInt64(k)]) } else { moved += 1 }
        }
        #expect(moved > 350 && moved < 650)   // about a quarter of the keys, and only those
    }

    @Test func leastRequestTakesTheLessLoadedOfTwoChoices() {
        var p = EndpointPicker()
        let c = cluster(.leastRequest, weights: [1, 1])
        let busy = c.endpoints[0].socket
        // Draws 0.1 and 0.9 offer one of each: the idle one wins.
        #expect(p.pick(c, hash: nil, random: 0.1, random2: 0.9, load: { $0 == busy ? 5 : 0 })!.socket != busy)
        #expect(p.pick(c, hash: nil, random: 0.9, random2: 0.1, load: { $0 == busy ? 5 : 0 })!.socket != busy)
    }
}

@Suite struct ClusterStateTests {
    @Test func circuitBreakersCountAndRelease() throws {
        let t = try tables("""

        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: web}
        spec:
          host: web
          trafficPolicy:
            connectionPool:
              tcp: {maxConnections: 1}
              http: {http1MaxPendingRequests: 1, http2MaxRequests: 2, maxRetries: 1}
        """)
        let c = try #require(t.cluster(for: Destination(host: "web.default.svc.cluster.local"), dialedPort: 80))
        let s = ClusterState(c)
        #expect(s.openConnection() && !s.openConnection())
        let loop = EmbeddedEventLoop()
        let woken = NIOLockedValueBox(0)
        #expect(s.wait(on: loop) { woken.withLockedValue { $0 += 1 } } != nil)
        #expect(s.wait(on: loop) {} == nil)              // pending full: overflow
        s.connectionClosed()
        #expect(woken.withLockedValue { $0 } == 1)       // the slot went to the waiter
        #expect(s.startRequest() && s.startRequest() && !s.startRequest())
        s.endRequest()
        #expect(s.startRequest())
        #expect(s.startRetry() && !s.startRetry())
        s.endRetry()
        #expect(s.startRetry())
    }
}

@Suite struct ProtocolSniffTests {
    func view(_ s: String) -> ByteBufferView { ByteBuffer(string: s).readableBytesView }

    @Test func classifiesFromTheFirstBytes() {
        #expect(ProtocolSniffHandler.classify(view("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) == .http2)
        #expect(ProtocolSniffHandler.classify(view("PRI * HTTP/2")) == nil)      // could still be the preface
        #expect(ProtocolSniffHandler.classify(view("GET /x HTTP/1.1\r\n")) == .http1)
        #expect(ProtocolSniffHandler.classify(view("PROPFIND / HTTP/1.1")) == .http1)
        #expect(ProtocolSniffHandler.classify(view("GE")) == nil)
        #expect(ProtocolSniffHandler.classify(view("\u{16}\u{03}\u{01}")) == .opaque)   // a TLS ClientHello
        #expect(ProtocolSniffHandler.classify(view(" GET")) == .opaque)
        // What servers read as a request is read as one (the strict parser then decides):
        // empty lines first (RFC 9112 §2.2), any tchar method, upper case or not.
        #expect(ProtocolSniffHandler.classify(view("\r\nGET / HTTP/1.1")) == .http1)
        #expect(ProtocolSniffHandler.classify(view("\n\r\n\r\nGET / HTTP/1.1")) == .http1)
        #expect(ProtocolSniffHandler.classify(view("get / HTTP/1.1")) == .http1)
        #expect(ProtocolSniffHandler.classify(view("SSH-2.0-OpenSSH_9.2p1 Debian")) == .opaque) // longer than any method
        #expect(ProtocolSniffHandler.classify(view("\r\n\r\n")) == nil)
        // Not a request line: opaque (authorized as TCP at the destination).
        #expect(ProtocolSniffHandler.classify(view("GET\t/admin HTTP/1.1")) == .opaque)
        #expect(ProtocolSniffHandler.classify(view(String(repeating: "\r\n", count: 9) + "GET / HTTP/1.1")) == .opaque)
        #expect(ProtocolSniffHandler.classify(view("ABCDEFGHIJKLMNOPQRSTU V")) == .opaque)
    }

    @Test func handsTheBufferedBytesOnAndLeaves() throws {
        let ch = EmbeddedChannel()
        let decided = NIOLockedValueBox<[SniffedProtocol]>([])
        try ch.pipeline.syncOperations.addHandler(ProtocolSniffHandler { p, _ in decided.withLockedValue { $0.append(p) } })
        try ch.writeInbound(ByteBuffer(string: "GE"))
        #expect(decided.withLockedValue { $0 }.isEmpty)
        #expect(try ch.readInbound(as: ByteBuffer.self) == nil)
        try ch.writeInbound(ByteBuffer(string: "T / HTTP/1.1\r\n"))
        #expect(decided.withLockedValue { $0 } == [.http1])
        #expect(try ch.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(throws: Error.self) { try ch.pipeline.syncOperations.handler(type: ProtocolSniffHandler.self) }
        _ = try ch.finish()
    }

    /// What the handler `decided` installs sees: bytes and events, in order.
    final class Seen: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var log: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { log.append(String(buffer: unwrapInboundIn(data))) }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? ChannelEvent, e == .inputClosed { log.append("half-closed") }
        }
    }

    /// A half-close decides the protocol, and whoever takes the connection over is told
    /// of it: lost, it left the agent holding the client's connection in CLOSE-WAIT (and
    /// a draining agent waiting for it) until the idle timeout.
    @Test(arguments: [("", SniffedProtocol.silent, ["half-closed"]), ("GE", .opaque, ["GE", "half-closed"])])
    func aHalfCloseDecidesAndIsPassedOn(sent: String, proto: SniffedProtocol, seen: [String]) throws {
        let ch = EmbeddedChannel()
        let next = Seen()
        let decided = NIOLockedValueBox<[SniffedProtocol]>([])
        try ch.pipeline.syncOperations.addHandler(ProtocolSniffHandler { p, ctx in
            decided.withLockedValue { $0.append(p) }
            try! ctx.pipeline.syncOperations.addHandler(next, position: .after(ctx.handler))
        })
        if !sent.isEmpty { try ch.writeInbound(ByteBuffer(string: sent)) }
        ch.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(decided.withLockedValue { $0 } == [proto])
        #expect(next.log == seen)
        _ = try ch.finish()
    }
}

@Suite struct SpliceTests {
    @Test func bytesCrossAndBackpressureStopsReading() throws {
        let a = EmbeddedChannel(), b = EmbeddedChannel()
        let (ha, hb) = SpliceHandler.pair()
        let reads = ReadCounter()
        try a.pipeline.syncOperations.addHandler(reads)
        try a.pipeline.syncOperations.addHandler(ha)
        try b.pipeline.syncOperations.addHandler(hb)
        try a.writeInbound(ByteBuffer(string: "ping"))
        a.pipeline.fireChannelReadComplete()
        #expect(try b.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "ping"))
        #expect(ha.bytesRead == 4)
        // b cannot take more: a's reads are held back until b drains.
        b.isWritable = false
        let before = reads.reads
        a.read()
        #expect(reads.reads == before)
        b.isWritable = true
        b.pipeline.fireChannelWritabilityChanged()
        #expect(reads.reads == before + 1)
    }

    @Test func aPairWithNoTrafficForTheIdleTimeoutCloses() throws {
        let loop = EmbeddedEventLoop()
        let a = EmbeddedChannel(loop: loop), b = EmbeddedChannel(loop: loop)
        try a.connect(to: .init(ipAddress: "10.0.0.1", port: 1)).wait()
        try b.connect(to: .init(ipAddress: "10.0.0.2", port: 1)).wait()
        let (ha, hb) = SpliceHandler.pair(idleTimeout: .seconds(2))
        try a.pipeline.syncOperations.addHandler(ha)
        try b.pipeline.syncOperations.addHandler(hb)
        loop.advanceTime(by: .milliseconds(1500))
        try b.writeInbound(ByteBuffer(string: "still here")) // traffic on the other side counts
        loop.advanceTime(by: .milliseconds(1500))
        #expect(a.isActive && b.isActive)
        loop.advanceTime(by: .milliseconds(600))
        #expect(!a.isActive && !b.isActive)
    }
}

/// Counts the reads that get through to the channel.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var reads = 0
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

/// The HTTP/1 handler's own answers (no upstream needed), on an EmbeddedChannel.
@Suite struct HTTP1ProxyHandlerTests {
    func channel(_ records: NIOLockedValueBox<[RequestRecord]>) throws -> EmbeddedChannel {
        let t = try tables(routedWeb)
        let listener = try #require(t.listeners[SocketKey(IPAddress("10.96.0.10")!, 80)])
        let loop = LoopState(dialer: Dialer(settings: UpstreamSettings(mark: 0), tunnels: nil), idleTimeout: .hours(1)) { e in
            if case .request(let r) = e { records.withLockedValue { $0.append(r) } }
        }
        let conn = ConnectionContext(id: 1, client: SocketKey(IPAddress("127.0.0.1")!, 40000),
                                     origin: ConnectionOrigin(destination: SocketKey(IPAddress("10.96.0.10")!, 80), cgroupID: 9),
                                     listener: listener, source: nil, tables: t, loop: loop, clusters: ClusterRegistry(),
                                     live: NIOLockedValueBox(t), sessions: LiveSessions(logger: Logger(label: "test")))
        let ch = EmbeddedChannel()
        try ch.pipeline.syncOperations.addHandler(HTTP1ProxyHandler(conn: conn))
        return ch
    }

    func request(_ ch: EmbeddedChannel, _ uri: String) throws -> (HTTPResponseHead, String) {
        var h = HTTPHeaders([("host", "web")])
        h.add(name: "user-agent", value: "t")
        try ch.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: h)))
        try ch.writeInbound(HTTPServerRequestPart.end(nil))
        guard case .head(let head)? = try ch.readOutbound(as: HTTPServerResponsePart.self) else { throw ProxyError("no head") }
        var body = ""
        while let part = try ch.readOutbound(as: HTTPServerResponsePart.self) {
            if case .body(.byteBuffer(let b)) = part { body += String(buffer: b) }
        }
        return (head, body)
    }

    @Test func localAnswersFollowEnvoysConventions() throws {
        let records = NIOLockedValueBox<[RequestRecord]>([])
        let ch = try channel(records)
        var (head, body) = try request(ch, "/health")
        #expect(head.status == .ok && body == "ok")
        (head, body) = try request(ch, "/old/x")
        #expect(head.status == .movedPermanently && head.headers.first(name: "location") == "http://web/new", "\(head)")  // Envoy path_redirect: whole path
        (head, body) = try request(ch, "/nothing-matches")
        #expect(head.status == .notFound && body.isEmpty)
        #expect(records.withLockedValue { $0.map(\.flags) } == [[], [], ["NR"]])
        #expect(records.withLockedValue { $0.map(\.status) } == [200, 301, 404])
        _ = try ch.finish()
    }

    @Test func parserErrorsAnswer400Or431AndClose() throws {
        for (error, status) in [(HTTP1RequestParser.Failure.headTooLarge, HTTPResponseStatus.requestHeaderFieldsTooLarge),
                                (.tooManyFields, .requestHeaderFieldsTooLarge), (.badContentLength, .badRequest),
                                (.multipleHosts, .badRequest)] {
            let records = NIOLockedValueBox<[RequestRecord]>([])
            let ch = try channel(records)
            ch.pipeline.fireErrorCaught(error)
            guard case .head(let head)? = try ch.readOutbound(as: HTTPServerResponsePart.self) else {
                Issue.record("no response to \(error)")
                continue
            }
            #expect(head.status == status && head.headers.first(name: "connection") == "close")
            #expect(records.withLockedValue { $0.map(\.flags) } == [["DPE"]])
            _ = try? ch.finish()
        }
    }
}

/// Strings the proxy writes per request, formatted by hand for speed: they must still be
/// what the slow, obvious code would print.
@Suite struct PerRequestFormattingTests {
    /// The by-length hop-by-hop check says what the set of names says, in any case.
    @Test func hopByHopByLengthAgreesWithTheList() {
        let others = ["host", "content-length", "x-forwarded-proto", "tee", "upgrades", "connectionx", "proxy-authorizatio", "", "é"]
        for name in ProxyExchange.hopByHopNames + others {
            for variant in [name, name.uppercased(), name.prefix(1).uppercased() + name.dropFirst()] {
                #expect(ProxyExchange.isHopByHop(variant) == ProxyExchange.hopByHop.contains(variant.lowercased()), "\(variant)")
            }
        }
    }

    @Test func requestIDsAreVersion4UUIDs() throws {
        let loop = LoopState(dialer: Dialer(settings: UpstreamSettings(mark: 0), tunnels: nil), idleTimeout: .hours(1)) { _ in }
        var seen = Set<String>()
        for _ in 0..<1000 {
            let id = loop.requestID()
            let uuid = try #require(UUID(uuidString: id), "\(id) is not a UUID")
            #expect(id == uuid.uuidString.lowercased())
            let bytes = withUnsafeBytes(of: uuid.uuid) { Array($0) }
            #expect(bytes[6] >> 4 == 4, "version 4: \(id)")
            #expect(bytes[8] >> 6 == 2, "RFC 4122 variant: \(id)")
            seen.insert(id)
        }
        #expect(seen.count == 1000)
    }

    @Test func addressesWithPortsAreInetNtopText() {
        #expect(SocketKey(IPAddress("10.96.0.1")!, 80).description == "10.96.0.1:80")
        #expect(SocketKey(IPAddress("255.255.255.255")!, 65535).description == "255.255.255.255:65535")
        #expect(SocketKey(IPAddress("fd00::1")!, 443).description == "[fd00::1]:443")
        #expect(IPAddress("2001:db8:0:0:1:0:0:1")!.description == "2001:db8::1:0:0:1")
        #expect(IPAddress("::ffff:10.0.0.1")!.description == "::ffff:10.0.0.1")
    }
}
