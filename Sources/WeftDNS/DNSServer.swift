import Glibc
import Synchronization
import Logging
import NIOCore
import NIOPosix

/// The agent's DNS server: UDP and TCP on loopback (the kernel sends workloads' queries
/// here, whatever resolver they asked), answering mesh names from the table and
/// forwarding the rest. Everything runs on one event loop of its own: the table, the
/// cache and the counters are only touched there.
public final class DNSServer: @unchecked Sendable {
    /// What the server has done, for the agent's metrics.
    public struct Stats: Sendable, Equatable {
        /// Queries answered from the mesh's names.
        public var mesh = 0
        /// Queries forwarded (answered from the cache or by a resolver).
        public var forwarded = 0
        /// Forwarded queries answered from the cache.
        public var cached = 0
        /// Exchanges with the node's resolvers.
        public var upstream = 0
        /// Forwarded queries no resolver answered (SERVFAIL given).
        public var failed = 0
        /// Forwarded queries answered SERVFAIL at once: too many questions were on their
        /// way upstream (DNSForwarder.maxInFlight).
        public var overloaded = 0
        /// TCP connections closed as they came: too many were open (`tcpConnections`).
        public var tcpRefused = 0
        /// Messages that were not a readable query (FORMERR given, or dropped).
        public var malformed = 0
        /// Replies too big for UDP, sent truncated.
        public var truncated = 0
    }

    private let group: MultiThreadedEventLoopGroup
    let loop: EventLoop
    let forwarder: DNSForwarder
    /// The agent starts listening once it has set the table of its config (a mesh name
    /// asked before would be forwarded, and answered NXDOMAIN).
    private var table = DNSTable()
    let counters: DNSCounters
    private var channels: [Channel] = []
    /// A workload's namespace by its cgroup id.
    private let namespaceOf: @Sendable (UInt64) -> String?
    private let owner = SocketOwner()
    /// REGISTRY_ONLY's names and what learns their answers (EgressNames); nil: off.
    var egress: (EgressNames, (@Sendable (LearnedAddresses) -> Void)?)?
    private let logger: Logger

    /// Most queries one TCP connection may have waiting for an answer; past it, reading
    /// pauses until answers go out.
    static let tcpInFlight = 16
    /// A TCP connection with nothing asked for this long is closed (RFC 7766 §6.2.3).
    static let tcpIdle = TimeAmount.seconds(10)
    /// Most TCP connections open at once; one more is closed as it comes (each holds a
    /// descriptor of the agent's).
    static let tcpConnections = 256
    private var tcpOpen = 0

    /// `namespaceOf` tells the namespace of the workload of a cgroup (the cgroup of the
    /// socket a query came from), for short names.
    /// `mark` is the SO_MARK of the agent's sockets (its queries to the node's resolvers
    /// must not come back to it).
    public init(resolvConf: ResolvConf, cacheSize: Int = 10_000, mark: UInt32 = 0, logger: Logger,
                namespaceOf: @escaping @Sendable (UInt64) -> String?) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
        counters = DNSCounters()
        forwarder = DNSForwarder(loop: loop, conf: resolvConf, cacheSize: cacheSize, mark: mark, counters: counters)
        self.logger = logger
        self.namespaceOf = namespaceOf
    }

    static let reusePort = ChannelOptions.Types.SocketOption(level: .socket, name: .init(rawValue: SO_REUSEPORT))

    /// Listens on `port` (UDP and TCP) of each of `hosts`. SO_REUSEPORT: an agent taking
    /// over binds the same port while the old one still answers.
    public func start(hosts: [String], port: Int) throws {
        for host in hosts {
            let udp = try DatagramBootstrap(group: loop)
                // recvmmsg: up to 32 datagrams a syscall, as a busy resolver gets them. NIO
                // splits one receive buffer between them: 4 KiB each (EDNS's largest).
                .channelOption(ChannelOptions.datagramVectorReadMessageCount, value: 32)
                .channelOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 32 * 4096))
                .channelOption(ChannelOptions.maxMessagesPerRead, value: 32)
                .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .channelOption(Self.reusePort, value: 1)
                .channelInitializer { [self] ch in
                    ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(UDPHandler(server: self)) }
                }
                .bind(host: host, port: port).wait()
            let tcp = try ServerBootstrap(group: loop)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(Self.reusePort, value: 1)
                .childChannelInitializer { [self] ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSTCPFrameDecoder()))
                        try ch.pipeline.syncOperations.addHandler(TCPHandler(server: self))
                    }
                }
                .bind(host: host, port: port).wait()
            channels += [udp, tcp]
        }
    }

    /// The mesh's names from now on.
    public func update(table: DNSTable) {
        loop.execute { self.table = table }
    }

    /// The node's resolvers from now on (resolv.conf changed).
    public func update(resolvConf: ResolvConf) {
        loop.execute { self.forwarder.update(resolvConf) }
    }

    /// The counters now. Read from any thread without waiting for the server's loop: the
    /// agent's metrics are scraped on one of the proxy's loops, which may not block.
    public func currentStats() -> Stats {
        counters.snapshot
    }

    public func shutdown() {
        for c in channels { try? c.close().wait() }
        channels = []
        try? group.syncShutdownGracefully()
    }

    /// What goes back for one query: known now (the mesh's answer, an error, nothing), or
    /// once the forwarder has it.
    fileprivate enum Reply {
        case now([UInt8]?)
        case later(EventLoopFuture<[UInt8]>)
    }

    /// The answer to one query, on the server's loop.
    fileprivate func handle(_ bytes: [UInt8], from peer: SocketAddress?, at local: SocketAddress?, overTCP: Bool) -> Reply {
        let namespace = { [self] () -> String? in
            guard let peer, let local, let cgroup = owner?.cgroup(proto: overTCP ? Int32(IPPROTO_TCP) : Int32(IPPROTO_UDP), peer: peer, local: local) else {
                return nil
            }
            return namespaceOf(cgroup)
        }
        switch DNSResponder.decide(bytes, table: table, namespace: namespace(), overTCP: overTCP) {
        case .drop:
            counters.malformed.add(1, ordering: .relaxed)
            return .now(nil)
        case .reply(let r):
            if r.count >= 4, r[3] & 0xF == UInt8(DNSRCode.formErr.rawValue) { counters.malformed.add(1, ordering: .relaxed) } else { counters.mesh.add(1, ordering: .relaxed) }
            if r.count >= 3, r[2] & 0x02 != 0 { counters.truncated.add(1, ordering: .relaxed) }
            return .now(r)
        case .forward(let query):
            counters.forwarded.add(1, ordering: .relaxed)
            if let hit = forwarder.cached(query) {
                counters.cached.add(1, ordering: .relaxed)
                learn(from: hit, for: query)
                let out = DNSResponder.fit(hit, to: query, overTCP: overTCP)
                if out.count != hit.count { counters.truncated.add(1, ordering: .relaxed) }
                return .now(out)
            }
            return .later(forwarder.resolve(query, bytes).map { [self] answer in
                learn(from: answer, for: query)
                let out = DNSResponder.fit(answer, to: query, overTCP: overTCP)
                if out.count != answer.count { counters.truncated.add(1, ordering: .relaxed) }
                return out
            })
        }
    }

    final class UDPHandler: ChannelInboundHandler {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        typealias OutboundOut = AddressedEnvelope<ByteBuffer>
        let server: DNSServer

        init(server: DNSServer) {
            self.server = server
        }

        private var unflushed = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            let peer = envelope.remoteAddress
            let channel = context.channel
            switch server.handle(Array(buffer: envelope.data), from: peer, at: channel.localAddress, overTCP: false) {
            case .now(let reply):
                // Answers to a burst of datagrams go out together, at the burst's end.
                guard let reply else { return }
                context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: peer, data: ByteBuffer(bytes: reply))), promise: nil)
                unflushed = true
            case .later(let answer):
                answer.whenSuccess { reply in
                    channel.writeAndFlush(AddressedEnvelope(remoteAddress: peer, data: ByteBuffer(bytes: reply)), promise: nil)
                }
            }
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            if unflushed {
                unflushed = false
                context.flush()
            }
            context.fireChannelReadComplete()
        }

        /// A client that went away (ICMP unreachable for an earlier reply) is not the
        /// server's problem.
        func errorCaught(context: ChannelHandlerContext, error: Error) {}
    }

    final class TCPHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let server: DNSServer
        private var waiting = 0
        private var idle: Scheduled<Void>?

        init(server: DNSServer) {
            self.server = server
        }

        private var counted = false

        func channelActive(context: ChannelHandlerContext) {
            guard server.tcpOpen < DNSServer.tcpConnections else {
                server.counters.tcpRefused.add(1, ordering: .relaxed)
                context.close(promise: nil)
                return
            }
            server.tcpOpen += 1
            counted = true
            armIdle(context)
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            idle?.cancel()
            waiting += 1
            if waiting >= DNSServer.tcpInFlight { _ = context.channel.setOption(ChannelOptions.autoRead, value: false) }
            let channel = context.channel
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let reply: EventLoopFuture<[UInt8]?>
            switch server.handle(Array(buffer: unwrapInboundIn(data)), from: channel.remoteAddress, at: channel.localAddress, overTCP: true) {
            case .now(let r): reply = context.eventLoop.makeSucceededFuture(r)
            case .later(let answer): reply = answer.map { $0 }
            }
            reply.whenSuccess { reply in
                let (me, context) = bound.value
                me.waiting -= 1
                if let reply {
                    channel.writeAndFlush(DNSTCPFrameDecoder.frame(reply), promise: nil)
                } else {
                    channel.close(promise: nil) // not a query: nothing more to say to it
                }
                if me.waiting < DNSServer.tcpInFlight { _ = channel.setOption(ChannelOptions.autoRead, value: true) }
                if me.waiting == 0 { me.armIdle(context) }
            }
        }

        private func armIdle(_ context: ChannelHandlerContext) {
            idle?.cancel()
            let channel = context.channel
            idle = context.eventLoop.scheduleTask(in: DNSServer.tcpIdle) { channel.close(promise: nil) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            idle?.cancel()
            if counted {
                counted = false
                server.tcpOpen -= 1
            }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            context.close(promise: nil)
        }
    }
}

/// The DNS server's counters: written on its loop, read at scrape from any thread.
final class DNSCounters: Sendable {
    let mesh = Atomic<Int>(0)
    let forwarded = Atomic<Int>(0)
    let cached = Atomic<Int>(0)
    let upstream = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let overloaded = Atomic<Int>(0)
    let malformed = Atomic<Int>(0)
    let truncated = Atomic<Int>(0)
    let tcpRefused = Atomic<Int>(0)

    var snapshot: DNSServer.Stats {
        var s = DNSServer.Stats()
        s.mesh = mesh.load(ordering: .relaxed)
        s.forwarded = forwarded.load(ordering: .relaxed)
        s.cached = cached.load(ordering: .relaxed)
        s.upstream = upstream.load(ordering: .relaxed)
        s.failed = failed.load(ordering: .relaxed)
        s.overloaded = overloaded.load(ordering: .relaxed)
        s.malformed = malformed.load(ordering: .relaxed)
        s.truncated = truncated.load(ordering: .relaxed)
        s.tcpRefused = tcpRefused.load(ordering: .relaxed)
        return s
    }
}
