import Glibc
import NIOCore
import NIOPosix
import WeftConfig

/// Asks the node's resolvers what the mesh does not answer, and keeps their answers for
/// their TTLs. Identical questions asked while one is on its way wait for it rather than
/// going upstream again (a client's retry, or many workloads starting at once). Runs on
/// one event loop: the cache and the waiting list are touched only there (hence
/// @unchecked Sendable: NIO's callbacks that capture it all run on that loop).
final class DNSForwarder: @unchecked Sendable {
    let loop: EventLoop
    private var conf: ResolvConf
    private var cache: DNSCache
    private var pending: [DNSCache.Key: [EventLoopPromise<[UInt8]>]] = [:]
    private let clock: () -> UInt64
    /// Exchanges upstream, questions nobody answered, questions refused for want of room.
    private let counters: DNSCounters

    /// Most distinct questions on their way upstream at once, and most queries waiting
    /// for one of them.
    static let maxInFlight = 256
    static let maxWaiters = 64

    /// However long resolv.conf lets a server take, the client's own resolver gives up
    /// after 5 s (glibc's default): the agent answers SERVFAIL before that, rather than
    /// leaving it to time out.
    static let overallDeadline = TimeAmount.seconds(4)

    /// SO_MARK of the agent's sockets: the kernel sends the agent's own queries where
    /// they were sent, not back to the agent (0: none).
    private let mark: UInt32

    init(loop: EventLoop, conf: ResolvConf, cacheSize: Int, mark: UInt32 = 0, counters: DNSCounters,
         clock: @escaping () -> UInt64 = { NIODeadline.now().uptimeNanoseconds }) {
        self.loop = loop
        self.counters = counters
        self.mark = mark
        self.conf = conf
        self.cache = DNSCache(capacity: cacheSize)
        self.clock = clock
    }

    func update(_ conf: ResolvConf) {
        self.conf = conf
    }

    /// The cached answer to `query`, with its ID, if there is one: answered at once,
    /// without a future (the common case of a busy node).
    func cached(_ query: DNSMessage) -> [UInt8]? {
        cache.lookup(DNSCache.Key(query), id: query.id, now: clock())
    }

    /// The upstream answer to `query` (whose wire form is `bytes`), with the client's ID;
    /// `cached` was asked first.
    func resolve(_ query: DNSMessage, _ bytes: [UInt8]) -> EventLoopFuture<[UInt8]> {
        let key = DNSCache.Key(query)
        let promise = loop.makePromise(of: [UInt8].self)
        let id = query.id
        let answered = promise.futureResult.map { bytes -> [UInt8] in
            var out = bytes
            out[0] = UInt8(id >> 8)
            out[1] = UInt8(id & 0xFF)
            return out
        }
        if let waiting = pending[key] {
            // The same question asked again and again while it is on its way is bounded
            // too: each waiting query is held until the answer comes.
            guard waiting.count < Self.maxWaiters else {
                counters.overloaded.add(1, ordering: .relaxed)
                return loop.makeSucceededFuture(DNSWriter.response(to: query, rcode: .servFail))
            }
            pending[key]!.append(promise)
            return answered
        }
        // Each distinct question on its way holds a socket: a workload asking for names
        // by the thousand must not take the agent's descriptors (the proxy's too).
        guard pending.count < Self.maxInFlight else {
            counters.overloaded.add(1, ordering: .relaxed)
            return loop.makeSucceededFuture(DNSWriter.response(to: query, rcode: .servFail))
        }
        pending[key] = [promise]
        let servers = (0..<conf.attempts).flatMap { _ in conf.nameservers }
        let perTry = TimeAmount.seconds(Int64(min(conf.timeout, 2)))
        let deadline = NIODeadline.now() + Self.overallDeadline
        ask(servers[...], bytes, query, perTry: perTry, deadline: deadline, last: nil).whenComplete { [self] result in
            let waiters = pending.removeValue(forKey: key) ?? []
            switch result {
            case .success(let (bytes, response)):
                cache.store(key, bytes, response, now: clock())
                for w in waiters { w.succeed(bytes) }
            case .failure:
                counters.failed.add(1, ordering: .relaxed)
                let fail = DNSWriter.response(to: query, rcode: .servFail)
                for w in waiters { w.succeed(fail) }
            }
        }
        return answered
    }

    /// Asks each of `servers` in turn until one answers (not SERVFAIL or REFUSED, which
    /// move on to the next as glibc does); the last such answer if none does better.
    private func ask(_ servers: ArraySlice<IPAddress>, _ bytes: [UInt8], _ query: DNSMessage, perTry: TimeAmount, deadline: NIODeadline,
                     last: ([UInt8], DNSMessage)?) -> EventLoopFuture<([UInt8], DNSMessage)> {
        guard let server = servers.first, NIODeadline.now() < deadline else {
            if let last { return loop.makeSucceededFuture(last) }
            return loop.makeFailedFuture(DNSWireError("no resolver answered"))
        }
        let rest = servers.dropFirst()
        let wait = min(perTry, deadline - NIODeadline.now())
        counters.upstream.add(1, ordering: .relaxed)
        return exchange(server, bytes, query, timeout: wait).flatMap { [self] got -> EventLoopFuture<([UInt8], DNSMessage)> in
            let code = got.1.rcode
            if code == DNSRCode.servFail.rawValue || code == DNSRCode.refused.rawValue {
                return ask(rest, bytes, query, perTry: perTry, deadline: deadline, last: got)
            }
            return loop.makeSucceededFuture(got)
        }.flatMapError { [self] _ in
            ask(rest, bytes, query, perTry: perTry, deadline: deadline, last: last)
        }
    }

    static let markOption = ChannelOptions.Types.SocketOption(level: .socket, name: .init(rawValue: SO_MARK))

    /// One question to one server: over UDP from a fresh socket (a random port and ID
    /// for each, so a forged answer has to guess both), again over TCP if the answer was
    /// truncated. An answer must carry our ID and our question; anything else on the
    /// socket is ignored.
    private func exchange(_ server: IPAddress, _ bytes: [UInt8], _ query: DNSMessage, timeout: TimeAmount) -> EventLoopFuture<([UInt8], DNSMessage)> {
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: server.description, port: 53)
        } catch {
            return loop.makeFailedFuture(error)
        }
        let id = UInt16.random(in: 0...UInt16.max)
        var out = bytes
        out[0] = UInt8(id >> 8)
        out[1] = UInt8(id & 0xFF)
        let question = query.questions.first
        let udp = loop.makePromise(of: ([UInt8], DNSMessage).self)
        let sent = out
        var udpBootstrap = DatagramBootstrap(group: loop)
        if mark != 0 { udpBootstrap = udpBootstrap.channelOption(Self.markOption, value: SocketOptionValue(Int32(bitPattern: mark))) }
        let connected = udpBootstrap
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(UpstreamAnswerHandler<AddressedEnvelope<ByteBuffer>>(id: id, question: question, answered: udp) { $0.data })
                }
            }
            .connect(to: address)
        send(ByteBuffer(bytes: sent), on: connected, timeout: timeout, answered: udp, to: "\(server)")
        return udp.futureResult.flatMap { [self] got in
            guard got.1.truncated else { return loop.makeSucceededFuture(got) }
            return exchangeTCP(address, sent, id: id, question: question, timeout: timeout)
        }
    }

    private func exchangeTCP(_ address: SocketAddress, _ bytes: [UInt8], id: UInt16, question: DNSQuestion?,
                             timeout: TimeAmount) -> EventLoopFuture<([UInt8], DNSMessage)> {
        let answered = loop.makePromise(of: ([UInt8], DNSMessage).self)
        var tcpBootstrap = ClientBootstrap(group: loop)
        if mark != 0 { tcpBootstrap = tcpBootstrap.channelOption(Self.markOption, value: SocketOptionValue(Int32(bitPattern: mark))) }
        let connected = tcpBootstrap
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSTCPFrameDecoder()))
                    try ch.pipeline.syncOperations.addHandler(UpstreamAnswerHandler<ByteBuffer>(id: id, question: question, answered: answered) { $0 })
                }
            }
            .connect(to: address)
        send(DNSTCPFrameDecoder.frame(bytes), on: connected, timeout: timeout, answered: answered, to: "\(address) over TCP")
        return answered.futureResult
    }

    /// Once `connected` is up, `payload` goes out; the channel closes when `answered` is
    /// done, or after `timeout`, which fails it.
    private func send(_ payload: ByteBuffer, on connected: EventLoopFuture<Channel>, timeout: TimeAmount,
                      answered: EventLoopPromise<([UInt8], DNSMessage)>, to server: String) {
        connected.whenComplete { result in
            switch result {
            case .success(let ch):
                let timer = ch.eventLoop.scheduleTask(in: timeout) { answered.fail(DNSWireError("no answer from \(server) within the timeout")) }
                answered.futureResult.whenComplete { _ in
                    timer.cancel()
                    ch.close(promise: nil)
                }
                ch.writeAndFlush(payload, promise: nil)
            case .failure(let error):
                answered.fail(error)
            }
        }
    }
}

/// Whether `bytes` answers the exchange `id` about `question`.
func answers(_ bytes: [UInt8], id: UInt16, question: DNSQuestion?) -> DNSMessage? {
    guard let m = try? DNSMessage(parsing: bytes), m.isResponse, m.id == id else { return nil }
    // A truncated answer may come without its question; any other must repeat ours.
    if m.truncated && m.questions.isEmpty { return m }
    guard m.questions.count == 1, m.questions.first == question else { return nil }
    return m
}

/// Takes the answer to one exchange off an upstream channel: a UDP one (`Message` is
/// AddressedEnvelope<ByteBuffer>) or a TCP one (a framed ByteBuffer).
final class UpstreamAnswerHandler<Message>: ChannelInboundHandler {
    typealias InboundIn = Message
    let id: UInt16
    let question: DNSQuestion?
    let answered: EventLoopPromise<([UInt8], DNSMessage)>
    let payload: (Message) -> ByteBuffer

    init(id: UInt16, question: DNSQuestion?, answered: EventLoopPromise<([UInt8], DNSMessage)>, payload: @escaping (Message) -> ByteBuffer) {
        self.id = id
        self.question = question
        self.answered = answered
        self.payload = payload
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Array(buffer: payload(unwrapInboundIn(data)))
        if let m = answers(bytes, id: id, question: question) { answered.succeed((bytes, m)) }
    }

    /// (Once answered, the close is ours and this changes nothing.)
    func channelInactive(context: ChannelHandlerContext) {
        answered.fail(DNSWireError("the resolver closed the connection without an answer"))
    }

    /// ICMP port unreachable (connection refused), a reset, a broken frame.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        answered.fail(error)
        context.close(promise: nil)
    }
}

/// DNS over TCP's framing (RFC 1035 §4.2.2): each message after its 2-byte length.
struct DNSTCPFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
              buffer.readableBytes >= 2 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 2)
        context.fireChannelRead(NIOAny(buffer.readSlice(length: Int(length))!))
        return .continue
    }

    static func frame(_ bytes: [UInt8]) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt16(bytes.count))
        b.writeBytes(bytes)
        return b
    }
}
