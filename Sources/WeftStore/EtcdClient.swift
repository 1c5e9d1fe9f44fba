/// WeftStore: etcd's v3 API (KV, Watch, Lease) over gRPC, for cluster mode. The messages and
/// stubs are generated from Protos/etcd (scripts/gen-etcd-protos); this file is the small
/// client weft uses over them. It knows keys and bytes, nothing of weft's config.
import FoundationEssentials
import GRPCCore
import GRPCNIOTransportHTTP2Posix

/// One key as etcd holds it.
public struct EtcdKeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    /// The store revision of the key's creation and of its last change.
    public var createRevision: Int64
    public var modRevision: Int64
    /// The lease the key lives on; 0: none.
    public var lease: Int64

    public var text: String { String(decoding: value, as: UTF8.self) }

    init(_ kv: Mvccpb_KeyValue) {
        key = String(decoding: kv.key, as: UTF8.self)
        value = [UInt8](kv.value)
        createRevision = kv.createRevision
        modRevision = kv.modRevision
        lease = kv.lease
    }
}

/// A condition of a transaction, on one key.
public enum EtcdCompare: Sendable {
    /// The key was last changed at this store revision (0: the key does not exist).
    case modRevision(String, equals: Int64)
    /// The key holds exactly these bytes.
    case value(String, equals: [UInt8])

    var message: Etcdserverpb_Compare {
        var c = Etcdserverpb_Compare()
        c.result = .equal
        switch self {
        case .modRevision(let key, let rev):
            c.key = Data(key.utf8)
            c.target = .mod
            c.modRevision = rev
        case .value(let key, let v):
            c.key = Data(key.utf8)
            c.target = .value
            c.value = Data(v)
        }
        return c
    }
}

/// One operation of a transaction.
public enum EtcdOp: Sendable {
    case put(String, [UInt8], lease: Int64 = 0)
    case delete(String)
    /// Every key that starts with the prefix.
    case deletePrefix(String)

    var message: Etcdserverpb_RequestOp {
        var op = Etcdserverpb_RequestOp()
        switch self {
        case .put(let key, let value, let lease):
            var p = Etcdserverpb_PutRequest()
            p.key = Data(key.utf8)
            p.value = Data(value)
            p.lease = lease
            op.requestPut = p
        case .delete(let key):
            var d = Etcdserverpb_DeleteRangeRequest()
            d.key = Data(key.utf8)
            op.requestDeleteRange = d
        case .deletePrefix(let prefix):
            var d = Etcdserverpb_DeleteRangeRequest()
            d.key = Data(prefix.utf8)
            d.rangeEnd = EtcdClient.prefixEnd(prefix)
            op.requestDeleteRange = d
        }
        return op
    }
}

/// A change a watch saw.
public struct EtcdEvent: Sendable, Equatable {
    public enum Kind: Sendable { case put, delete }
    public var kind: Kind
    /// On a delete: the key, with the deletion's revision as modRevision and no value.
    public var kv: EtcdKeyValue

    public init(kind: Kind, kv: EtcdKeyValue) {
        self.kind = kind
        self.kv = kv
    }
}

/// What went wrong talking to etcd, in one line.
public enum EtcdError: Error, CustomStringConvertible, Equatable {
    /// etcd could not be reached or did not answer in time.
    case unavailable(String)
    /// A watch asked for history etcd has compacted away; re-list at `compactRevision` or later.
    case compacted(compactRevision: Int64)
    /// A lease expired or was revoked (keys on it are gone).
    case leaseLost(Int64)
    /// etcd refused the request (too large, too many operations, ...).
    case refused(String)

    public var description: String {
        switch self {
        case .unavailable(let m): return "etcd unavailable: \(m); check --etcd (and --etcd-ca/cert/key) and that the members are up"
        case .compacted(let r): return "etcd compacted its history past the watch (compact revision \(r))"
        case .leaseLost(let id): return "etcd lease \(String(id, radix: 16)) expired"
        case .refused(let m): return "etcd refused the request: \(m)"
        }
    }
}

/// Where etcd is: `--etcd http://10.0.0.1:2379,http://10.0.0.2:2379` and, for https, the
/// files of `--etcd-ca/--etcd-cert/--etcd-key` (etcdctl's meaning of each).
public struct EtcdEndpoints: Sendable, Equatable {
    public struct TLSFiles: Sendable, Equatable {
        /// PEM roots that sign the members' certificates; nil: the system's.
        public var ca: String?
        /// Client certificate and key, for members that require one.
        public var cert: String?
        public var key: String?
        public init(ca: String?, cert: String?, key: String?) {
            self.ca = ca
            self.cert = cert
            self.key = key
        }
    }

    public var hosts: [(host: String, port: Int)]
    public var tls: TLSFiles?
    /// As given, for messages.
    public var text: String

    public static func == (a: Self, b: Self) -> Bool { a.text == b.text && a.tls == b.tls }

    /// Parses a comma-separated list of http:// or https:// URLs (scheme, host, port only).
    public init(_ list: String, tls files: TLSFiles? = nil) throws(EtcdConfigError) {
        text = list
        hosts = []
        var scheme: String?
        for raw in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !raw.isEmpty {
            guard let sep = raw.range(of: "://") else { throw EtcdConfigError("\(raw): give a URL, http://HOST:PORT or https://HOST:PORT") }
            let s = String(raw[..<sep.lowerBound]).lowercased()
            guard s == "http" || s == "https" else { throw EtcdConfigError("\(raw): scheme must be http or https") }
            if let scheme, scheme != s { throw EtcdConfigError("\(list): all endpoints must use the same scheme") }
            scheme = s
            var rest = String(raw[sep.upperBound...])
            if rest.hasSuffix("/") { rest.removeLast() }
            guard !rest.contains("/"), !rest.contains("@") else { throw EtcdConfigError("\(raw): only scheme://HOST:PORT (no path, no user)") }
            let host: String
            let portText: Substring
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { throw EtcdConfigError("\(raw): unclosed [ in an IPv6 address") }
                host = String(rest[rest.index(after: rest.startIndex)..<close])
                let after = rest[rest.index(after: close)...]
                portText = after.hasPrefix(":") ? after.dropFirst() : ""
            } else if let colon = rest.lastIndex(of: ":") {
                host = String(rest[..<colon])
                portText = rest[rest.index(after: colon)...]
            } else {
                host = rest
                portText = ""
            }
            let port = portText.isEmpty ? 2379 : Int(portText) ?? -1
            guard !host.isEmpty, (1...65535).contains(port) else { throw EtcdConfigError("\(raw): bad host or port") }
            hosts.append((host, port))
        }
        guard !hosts.isEmpty else { throw EtcdConfigError("--etcd needs at least one URL") }
        if scheme == "https" {
            tls = files ?? TLSFiles(ca: nil, cert: nil, key: nil)
        } else {
            if let files, files.ca != nil || files.cert != nil || files.key != nil {
                throw EtcdConfigError("--etcd-ca/--etcd-cert/--etcd-key need https:// endpoints (\(list) is http)")
            }
            tls = nil
        }
        if let t = tls, (t.cert == nil) != (t.key == nil) { throw EtcdConfigError("--etcd-cert and --etcd-key go together") }
    }
}

/// A bad --etcd setting.
public struct EtcdConfigError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// A client for one etcd cluster. `run()` keeps a connection to each member; every call
/// made while it runs goes to one that is up.
public final class EtcdClient: Sendable {
    public let endpoints: EtcdEndpoints
    let grpc: GRPCClient<HTTP2ClientTransport.Posix>
    /// How long one unary call may take before it fails as unavailable.
    public let callTimeout: Duration

    public init(_ endpoints: EtcdEndpoints, callTimeout: Duration = .seconds(5)) throws {
        self.endpoints = endpoints
        self.callTimeout = callTimeout
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if let tls = endpoints.tls {
            let roots: TLSConfig.TrustRootsSource = tls.ca.map { .certificates([.file(path: $0, format: .pem)]) } ?? .systemDefault
            if let cert = tls.cert, let key = tls.key {
                security = .mTLS(certificateChain: [.file(path: cert, format: .pem)], privateKey: .file(path: key, format: .pem)) {
                    $0.trustRoots = roots
                }
            } else {
                security = .tls { $0.trustRoots = roots }
            }
        } else {
            security = .plaintext
        }
        let target: any ResolvableTarget
        if endpoints.hosts.allSatisfy({ Self.isIPv4($0.host) }) {
            target = .ipv4(pairs: endpoints.hosts)
        } else if endpoints.hosts.allSatisfy({ $0.host.contains(":") }) {
            target = .ipv6(pairs: endpoints.hosts)
        } else if endpoints.hosts.count == 1 {
            target = .dns(host: endpoints.hosts[0].host, port: endpoints.hosts[0].port)
        } else {
            throw EtcdConfigError("\(endpoints.text): several endpoints must be IP addresses (or give one DNS name for all members)")
        }
        var config = HTTP2ClientTransport.Posix.Config.defaults
        // etcd's members answer pings; a dead connection is noticed in seconds, not at the
        // next call (a watch would otherwise wait on a member that is gone).
        config.connection.keepalive = .init(time: .seconds(10), timeout: .seconds(5), allowWithoutCalls: true)
        config.backoff.max = .seconds(2)
        // etcd answers a whole revision in one message; its own default limit is 2 MiB.
        // Round robin over the members' connections: a call goes to a member that is up
        // (grpc-swift's pick-first uses only the first address of a list like this one, so
        // one member down would be the whole cluster down).
        let transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: security, config: config,
                                                       serviceConfig: ServiceConfig(loadBalancingConfig: [.roundRobin]))
        grpc = GRPCClient(transport: transport)
    }

    static func isIPv4(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    /// Runs the connections until `shutdown()`.
    public func run() async throws { try await grpc.runConnections() }

    /// Ends calls in flight gracefully and stops `run()`.
    public func shutdown() { grpc.beginGracefulShutdown() }

    /// Runs `body` with a client for `endpoints`, connected for its duration.
    public static func with<R: Sendable>(_ endpoints: EtcdEndpoints, callTimeout: Duration = .seconds(5),
                                         _ body: @Sendable (EtcdClient) async throws -> R) async throws -> R {
        let client = try EtcdClient(endpoints, callTimeout: callTimeout)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self) { group in
            group.addTask { try await client.run() }
            defer { client.shutdown() }
            return try await body(client)
        }
    }

    /// Options of a unary call (bounded by callTimeout) or a stream (unbounded).
    func options(stream: Bool = false) -> CallOptions {
        var o = CallOptions.defaults
        if !stream { o.timeout = callTimeout }
        // Fail fast when no member is reachable, with grpc-swift's reason (waiting for a
        // connection would hide it behind a timeout); reads are retried within the call
        // timeout (`call`), so a member restarting or an election is not an error yet.
        o.waitForReady = false
        // A listing of a large config is one message (10,000 resources are ~5 MB); etcd
        // itself bounds what it accepts per request (--max-request-bytes).
        o.maxResponseMessageBytes = Self.maxMessageBytes
        o.maxRequestMessageBytes = Self.maxMessageBytes
        return o
    }

    static let maxMessageBytes = 64 << 20

    /// The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
    static func prefixEnd(_ prefix: String) -> Data {
        var b = [UInt8](prefix.utf8)
        while let last = b.last {
            if last < 0xff {
                b[b.count - 1] = last + 1
                return Data(b)
            }
            b.removeLast()
        }
        return Data([0])
    }

    /// Runs one call. `retry`: the call may be repeated (a read, a lease grant or revoke),
    /// and is, while etcd answers "unavailable" (a member going away, an election: "leader
    /// changed"), within the call timeout. A write is never repeated: its first attempt may
    /// have been applied, and the caller decides.
    func call<R>(_ what: String, retry: Bool = false, _ body: () async throws -> R) async throws -> R {
        let deadline = ContinuousClock.now + callTimeout
        var pause = Duration.milliseconds(50)
        while true {
            do {
                return try await body()
            } catch let e as RPCError {
                if retry, e.code == .unavailable, ContinuousClock.now + pause < deadline {
                    try await Task.sleep(for: pause)
                    pause = min(pause * 2, .milliseconds(500))
                    continue
                }
                throw Self.map(e, endpoints: endpoints, what: what)
            }
        }
    }

    static func map(_ e: RPCError, endpoints: EtcdEndpoints, what: String) -> EtcdError {
        switch e.code {
        case .unavailable, .deadlineExceeded, .cancelled, .unknown:
            // grpc-swift's text says why no connection is ready ("Could not establish a
            // connection…", "closed the connection before completing the HTTP/2 connection
            // preface"); the cause says what failed underneath (refused, a TLS handshake).
            var text = e.message.replacingOccurrences(of: "Channel is in a transient failure state and 'wait for ready' isn't enabled. ", with: "")
            if text.isEmpty { text = "\(e.code)" }
            if let cause = e.cause { text += " (\(cause))" }
            return .unavailable("\(what) at \(endpoints.text): \(text)")
        default:
            return .refused("\(what): \(e.message)")
        }
    }

    // MARK: KV

    /// The keys that start with `prefix` (or exactly `key` with `prefix: false`), as of
    /// store revision `revision` (0: now), and the store revision read.
    public func get(_ key: String, prefix: Bool = false, revision: Int64 = 0) async throws -> (kvs: [EtcdKeyValue], revision: Int64) {
        var r = Etcdserverpb_RangeRequest()
        r.key = Data(key.utf8)
        if prefix { r.rangeEnd = Self.prefixEnd(key) }
        r.revision = revision
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let opts = options()
        let response = try await call("reading \(key)", retry: true) {
            try await kv.range(r, options: opts)
        }
        return (response.kvs.map(EtcdKeyValue.init), response.header.revision)
    }

    /// Writes one key; returns the store revision of the write.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) async throws -> Int64 {
        var p = Etcdserverpb_PutRequest()
        p.key = Data(key.utf8)
        p.value = Data(value)
        p.lease = lease
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let opts = options()
        return try await call("writing \(key)") { try await kv.put(p, options: opts) }.header.revision
    }

    /// Deletes one key, or every key with the prefix; returns how many.
    @discardableResult
    public func delete(_ key: String, prefix: Bool = false) async throws -> Int64 {
        var d = Etcdserverpb_DeleteRangeRequest()
        d.key = Data(key.utf8)
        if prefix { d.rangeEnd = Self.prefixEnd(key) }
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let opts = options()
        return try await call("deleting \(key)") { try await kv.deleteRange(d, options: opts) }.deleted
    }

    /// All of `then` if every condition holds, else all of `otherwise`, atomically. Returns
    /// whether the conditions held and the store revision after it.
    public func txn(if compares: [EtcdCompare], then ops: [EtcdOp], else otherwise: [EtcdOp] = []) async throws -> (succeeded: Bool, revision: Int64) {
        var t = Etcdserverpb_TxnRequest()
        t.compare = compares.map(\.message)
        t.success = ops.map(\.message)
        t.failure = otherwise.map(\.message)
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let opts = options()
        let r = try await call("transaction") { try await kv.txn(t, options: opts) }
        return (r.succeeded, r.header.revision)
    }

    /// Drops the history before `revision` (what etcd's auto-compaction does).
    public func compact(_ revision: Int64) async throws {
        var c = Etcdserverpb_CompactionRequest()
        c.revision = revision
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let opts = options()
        _ = try await call("compacting", retry: true) { try await kv.compact(c, options: opts) }
    }

    // MARK: Lease

    /// A new lease of `ttl` seconds; keys put on it go when it expires or is revoked.
    public func grantLease(ttl: Int64) async throws -> Int64 {
        var g = Etcdserverpb_LeaseGrantRequest()
        g.ttl = ttl
        let lease = Etcdserverpb_Lease.Client(wrapping: grpc)
        let opts = options()
        let r = try await call("granting a lease", retry: true) { try await lease.leaseGrant(g, options: opts) }
        if !r.error.isEmpty { throw EtcdError.refused(r.error) }
        return r.id
    }

    public func revokeLease(_ id: Int64) async throws {
        var r = Etcdserverpb_LeaseRevokeRequest()
        r.id = id
        let lease = Etcdserverpb_Lease.Client(wrapping: grpc)
        let opts = options()
        _ = try await call("revoking a lease", retry: true) { try await lease.leaseRevoke(r, options: opts) }
    }

    /// Keeps lease `id` alive, renewing every `interval`, until cancelled. Throws
    /// `leaseLost` once etcd says the lease is gone, `unavailable` when the stream breaks.
    public func keepAlive(_ id: Int64, every interval: Duration) async throws {
        let lease = Etcdserverpb_Lease.Client(wrapping: grpc)
        let opts = options(stream: true)
        try await call("keeping a lease alive") {
            try await lease.leaseKeepAlive(options: opts, requestProducer: { writer in
                var ping = Etcdserverpb_LeaseKeepAliveRequest()
                ping.id = id
                while true {
                    try await writer.write(ping)
                    try await Task.sleep(for: interval)
                }
            }, onResponse: { response in
                for try await r in response.messages where r.ttl <= 0 {
                    throw EtcdError.leaseLost(id)
                }
                throw EtcdError.unavailable("the lease keep-alive stream to \(self.endpoints.text) ended")
            })
        }
    }

    // MARK: Watch

    /// Watches every key with `prefix` from store revision `from` on, handing `body` the
    /// events of each revision together (in order, a transaction's changes never split), and
    /// with an empty list the progress etcd reports while nothing changes. Runs until
    /// cancelled or `body` throws; throws `compacted` when `from` is older than etcd keeps,
    /// `unavailable` when the stream breaks (watch again from the last revision seen + 1).
    public func watch(prefix: String, from revision: Int64,
                      _ body: @escaping @Sendable (_ events: [EtcdEvent], _ revision: Int64) async throws -> Void) async throws {
        try await watch([(prefix, revision)]) { _, events, revision in try await body(events, revision) }
    }

    /// Several prefixes on one stream (etcd multiplexes watchers on a stream, as its own
    /// client does): `body` gets the index of the watch each batch belongs to; each watch
    /// resumes from its own revision.
    public func watch(_ watches: [(prefix: String, from: Int64)],
                      _ body: @escaping @Sendable (_ watch: Int, _ events: [EtcdEvent], _ revision: Int64) async throws -> Void) async throws {
        let requests = watches.enumerated().map { i, w in
            Etcdserverpb_WatchRequest.with {
                $0.createRequest = Etcdserverpb_WatchCreateRequest.with { c in
                    c.key = Data(w.prefix.utf8)
                    c.rangeEnd = Self.prefixEnd(w.prefix)
                    c.startRevision = w.from
                    c.progressNotify = true
                    // Our own ids (etcd ≥ 3.4 takes them): the index, plus one (0 asks etcd).
                    c.watchID = Int64(i + 1)
                }
            }
        }
        let names = watches.map(\.prefix).joined(separator: ", ")
        let watch = Etcdserverpb_Watch.Client(wrapping: grpc)
        let opts = options(stream: true)
        let endpoints = self.endpoints
        try await call("watching \(names)") {
            try await watch.watch(options: opts, requestProducer: { writer in
                try await writer.write(contentsOf: requests)
                // Closing the request side would end the watch: wait until the call ends.
                let (stream, _) = AsyncStream<Never>.makeStream()
                for await _ in stream {}
            }, onResponse: { response in
                for try await r in response.messages {
                    if r.compactRevision > 0 { throw EtcdError.compacted(compactRevision: r.compactRevision) }
                    if r.canceled { throw EtcdError.unavailable("etcd ended the watch on \(names): \(r.cancelReason)") }
                    if r.created && r.events.isEmpty { continue }
                    let index = Int(r.watchID) - 1
                    guard watches.indices.contains(index) else { continue }
                    let events = r.events.map { e in
                        EtcdEvent(kind: e.type == .delete ? .delete : .put, kv: EtcdKeyValue(e.kv))
                    }
                    // Resume point: the last event's revision, or on a progress report (no
                    // events) the revision etcd has sent everything up to.
                    try await body(index, events, r.events.last?.kv.modRevision ?? r.header.revision)
                }
                throw EtcdError.unavailable("the watch stream to \(endpoints.text) ended")
            })
        }
    }
}
