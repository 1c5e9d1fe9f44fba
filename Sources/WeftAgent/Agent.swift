import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import Synchronization
import WeftBPF
import WeftConfig
import WeftDataplane
import WeftDNS
import WeftIdentity
import WeftProxy
import WeftStore

/// Flags of `weft agent`.
public struct AgentOptions: Sendable {
    /// Directory of *.yaml / *.yml policy files.
    public var configDir: String
    /// cgroup v2 directory the programs attach to (workloads live below it).
    public var cgroup: String
    /// bpffs directory for pins.
    public var bpffs: String
    /// Admin socket path.
    public var adminSocket: String
    /// This node's name (matches WorkloadEntry weft.io/node).
    public var node: String
    /// Leave programs attached and maps pinned on exit.
    public var keepDatapath: Bool
    /// Seconds a removed backend stays draining before it is deleted.
    public var drainPeriod: Double
    /// Seconds between full re-syncs (drain expiry, cgroups that appeared).
    public var resyncInterval: Double
    /// Size of weft_slot_v1, the slots all selection tables share.
    public var lbSlots: UInt32
    /// Where committed revisions are persisted.
    public var stateDir: String
    /// How many revisions are kept for rollback.
    public var keepRevisions: Int
    /// Mesh root namespace (mesh-wide PeerAuthentication).
    public var rootNamespace: String
    /// Outbound capture listener port (127.0.0.1 and ::1); 0 turns L7 capture off.
    public var proxyPort: UInt16
    /// SO_MARK on the agent's upstream sockets, which the kernel never captures.
    public var agentMark: UInt32
    /// Where to write one JSON line per proxied request ("-" = stdout); nil = off.
    public var accessLog: String?
    /// Prometheus metrics port; 0 = off.
    public var metricsPort: UInt16
    /// The address the metrics are served on (loopback unless a Prometheus elsewhere
    /// scrapes the node).
    public var metricsAddress = "127.0.0.1"
    /// Seconds an HTTP/1 client may take to send a request's headers (slowloris bound).
    public var requestHeaderTimeout: Double = 10
    /// Seconds a connection with nothing in flight stays open (proxy clients, tunnels,
    /// spliced sessions).
    public var idleTimeout: Double = 3600
    /// Trust domain of workload identities.
    public var trustDomain = "cluster.local"
    /// Node CA from `weft ca issue-node`; nil: the agent's own root in state-dir/ca.
    public var caDir: String?
    /// Lifetime of workload certificates, seconds (renewed at half life).
    public var certTTL: Double = 24 * 3600
    /// mTLS tunnel port on all of the node's addresses; 0 = no tunnel.
    public var tunnelPort: UInt16 = 15008
    /// PEM file of roots trusted besides this node's CA's root (CA rotation); re-read
    /// at every resync, as is --ca.
    public var trustBundle: String?
    /// Plaintext inbound listener (every address) that TC steers to; 0 = none.
    public var inboundPort: UInt16 = 15006
    /// The node's interfaces that get the TC ingress program (early STRICT drop,
    /// steering of plaintext into the inbound listener).
    public var interfaces: [String] = []
    /// Seconds a TLS handshake on the tunnel may take.
    public var handshakeTimeout: Double = 10
    /// Seconds an exchange may go without a byte either way (0: no limit).
    public var streamIdleTimeout: Double = 300
    /// Seconds a request (head and body) may take to arrive (0: no limit).
    public var requestTimeout: Double = 0
    /// Most client connections at once (0: half the open-files limit).
    public var maxConnections = 0
    /// Most client connections at once from one address, on the tunnel and inbound
    /// listeners.
    public var maxConnectionsPerSource = 1024
    /// Cluster mode: the etcd cluster the config comes from and status goes to (--etcd).
    public var etcd: EtcdEndpoints?
    /// Distributed tracing of proxied requests (--tracing-endpoint); nil: off.
    public var tracing: TracingSettings?
    /// An agent answering on --admin-socket is always taken over (its listening sockets,
    /// then it drains and exits); with this set (--takeover) there must be one.
    public var takeover = false
    /// Seconds an agent that handed over waits for its connections to finish (--drain-timeout).
    public var drainTimeout: Double = 30
    /// The workloads' DNS server on loopback (--dns-port); 0: workloads' DNS is left alone.
    public var dnsPort: UInt16 = 15053
    /// The node's resolvers, for what the DNS server forwards (--resolv-conf).
    public var resolvConf = "/etc/resolv.conf"

    public init(configDir: String, cgroup: String, bpffs: String, adminSocket: String, node: String,
                keepDatapath: Bool, drainPeriod: Double, resyncInterval: Double, lbSlots: UInt32,
                stateDir: String, keepRevisions: Int, rootNamespace: String, proxyPort: UInt16 = 15001,
                agentMark: UInt32 = 0x7765_0000, accessLog: String? = nil, metricsPort: UInt16 = 15090) {
        self.accessLog = accessLog
        self.metricsPort = metricsPort
        self.proxyPort = proxyPort
        self.agentMark = agentMark
        self.configDir = configDir
        self.cgroup = cgroup
        self.bpffs = bpffs
        self.adminSocket = adminSocket
        self.node = node
        self.keepDatapath = keepDatapath
        self.drainPeriod = drainPeriod
        self.resyncInterval = resyncInterval
        self.lbSlots = lbSlots
        self.stateDir = stateDir
        self.keepRevisions = keepRevisions
        self.rootNamespace = rootNamespace
    }
}

/// What the agent is serving now (reported on the admin socket).
public struct AgentStatus: Codable, Sendable {
    public var node: String
    public var revision: UInt64
    public var contentHash: String
    public var services: Int
    public var lastApplyMs: Double?
    /// Problems of the config dir that was last rejected (empty when it was accepted).
    public var configErrors: [String]
    public var adopted: Bool
    /// Cluster mode: the etcd endpoints and the cluster revision in force.
    public var etcd: String?
    public var clusterRevision: UInt64?
}

/// The node agent. Holds the last good snapshot; a config that fails validation changes
/// nothing in the kernel.
public final class Agent: Service, @unchecked Sendable {
    let options: AgentOptions
    let logger: Logger
    let lock = NSLock()
    /// Held for a whole read-plan-write of the maps: a config reload and the periodic
    /// resync must never plan against the same state and both write (they would collide
    /// on table ids).
    private let applying = NSLock()
    /// Held for a whole validate → datapath → persist sequence: config-dir reloads and
    /// admin requests commit one at a time.
    let committing = NSLock()
    var store: RevisionStore?
    var snapshot = Snapshot.empty()
    /// The snapshot's map contents, computed once per revision (Maglev tables are costly).
    var desired = DesiredState(snapshot: .empty(), node: "")
    private var reconciler: Reconciler
    var status: AgentStatus

    /// Creates an agent (nothing happens until `run`).
    /// The agent's one metrics registry (the proxy's series, the kernel's counters, and
    /// whatever reports through swift-metrics when the process bootstrapped it with this
    /// registry).
    public let registry: PrometheusCollectorRegistry
    let kernelMetrics: KernelMetrics
    /// The monitors attached (`weft monitor`).
    let monitor: MonitorHub

    public init(options: AgentOptions, logger: Logger, registry: PrometheusCollectorRegistry = .init()) {
        executable = Agent.invokedPath()
        self.options = options
        self.logger = logger
        self.registry = registry
        kernelMetrics = KernelMetrics(registry: registry)
        monitor = MonitorHub(logger: logger)
        reconciler = Reconciler(drainPeriod: options.drainPeriod)
        autoAddresses = AutoAddressStore(path: options.stateDir + "/auto-addresses.json", logger: logger)
        status = AgentStatus(node: options.node, revision: 0, contentHash: "", services: 0, lastApplyMs: nil, configErrors: [], adopted: false, etcd: options.etcd?.text)
    }

    /// Runs until SIGTERM/SIGINT (ServiceLifecycle), then tears down or keeps the datapath.
    public func run() async throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: options.configDir, isDirectory: &isDir), isDir.boolValue else {
            throw AgentError("config dir \(options.configDir) does not exist (--config-dir)")
        }
        let openFiles = raiseOpenFilesLimit()
        // Everything that can fail without touching the kernel comes first.
        let watcher = try ConfigWatcher(directory: options.configDir)
        defer { watcher.stop() }
        store = try RevisionStore(dir: options.stateDir, keep: options.keepRevisions)
        let ca: CertificateAuthority
        do {
            ca = try WorkloadCertificates.authority(caDir: options.caDir, stateDir: options.stateDir,
                                                    trustDomain: options.trustDomain, node: options.node)
        } catch {
            throw AgentError("certificate authority: \(error)")
        }
        let certificates = WorkloadCertificates(ca: ca, ttl: options.certTTL)
        let identities = AgentIdentities(certificates: certificates, bundle: try trustBundle(certificates))
        self.identities = identities
        let monitor = monitor
        // An agent running on the admin socket is taken over: asked for its sockets before
        // this one's admin socket takes the path (binding it blindly would leave the
        // running agent unreachable, and its ports taken).
        let handover = try Handover.fetch(adminSocket: options.adminSocket, required: options.takeover, logger: logger)
        if handover == nil { serveUpgrades() }
        let admin = try AdminServer(path: options.adminSocket, logger: logger, stream: { [self] request, fd in
            if request.op == .handover {
                handOver(fd)
            } else {
                monitor.attach(fd: fd, filter: request.filter ?? FlowFilter())
            }
        }) { [self] request in
            handle(request)
        }
        defer { admin.stop(unlink: !handedOver.load(ordering: .relaxed)) }
        // The listener exists before the kernel can send it anything.
        var proxy: ProxyRuntime?
        var inboundListeners: [(v6: Bool, fd: CInt)] = []
        if options.proxyPort != 0 {
            let log = try options.accessLog.map { try AccessLog(path: $0) }
            // Nobody can read metrics that are not served: then they are not counted either
            // (the per-request label work is not free).
            let metrics = options.metricsPort != 0 ? IstioMetrics(registry: registry) : nil
            var settings = ProxyRuntime.Settings(port: options.proxyPort, agentMark: options.agentMark,
                                                  requestHeaderTimeout: .milliseconds(Int64(options.requestHeaderTimeout * 1000)),
                                                  idleTimeout: .milliseconds(Int64(options.idleTimeout * 1000)),
                                                  tunnelPort: options.tunnelPort, inboundPort: options.inboundPort)
            typealias S = ProxyRuntime.Settings
            if let t = S.seconds(options.handshakeTimeout) { settings.handshakeTimeout = t }
            settings.streamIdleTimeout = S.seconds(options.streamIdleTimeout)
            settings.requestTimeout = S.seconds(options.requestTimeout)
            if let t = S.seconds(options.drainPeriod) { settings.drainPeriod = t }
            settings.tracing = options.tracing
            // Each proxied connection takes two descriptors (client and upstream), and the
            // agent needs some of its own.
            settings.maxConnections = options.maxConnections > 0 ? options.maxConnections : max(256, (openFiles - 256) / 2)
            settings.maxConnectionsPerSource = options.maxConnectionsPerSource
            logger.info("connection limits: \(settings.maxConnections) in all, \(settings.maxConnectionsPerSource) per remote address (open files: \(openFiles))",
                        metadata: ["component": "proxy"])
            let p = ProxyRuntime(settings: settings,
                                  logger: logger,
                                  identities: identities,
                                  registry: registry,
                                  observer: { [logger] event in
                                      metrics?.record(event)
                                      if case .request(let r) = event { log?.write(r) }
                                      monitor.publish(event)
                                      if case .audit(let d, let request, let peer) = event {
                                          logger.info("AUDIT \(d.audited.map { "\($0.namespace)/\($0.name)" }.joined(separator: ",")): \(peer ?? "plaintext") \(request) → \(d)",
                                                      metadata: ["component": "authz"])
                                      }
                                  })
            if let handover { p.inherit(handover.sockets) }
            try OutboundListener(runtime: p, origin: { [self] client in origin(of: client) }).start()
            try TunnelListener(runtime: p).start()
            inboundListeners = try PlaintextListener(runtime: p).start()
            if metrics != nil {
                try p.serveMetrics(host: options.metricsAddress, port: options.metricsPort) { [self] in collectKernelCounters() }
            }
            // Sockets the old agent had and this one does not serve (a listener turned off).
            for key in p.closeUnusedInherited() {
                logger.info("takeover: not serving \(key) any more", metadata: ["component": "handover"])
            }
            proxy = p
        }
        defer { proxy?.stop() }
        lock.withLock { self.proxy = proxy }
        // Listening once the config is in (below): until then the kernel finds no DNS
        // socket of the agent's and leaves queries to the resolvers they were sent to (or,
        // in a takeover, to the old agent's DNS server).
        let dnsServer = makeDNS()
        defer { dnsServer.shutdown() }
        let resolver = ServiceResolver(server: dnsServer, logger: logger) { [self] in resolvedNamesChanged() }
        lock.withLock {
            self.dns = dnsServer
            self.resolver = resolver
        }
        let datapath = try Datapath(bpffs: options.bpffs, cgroup: options.cgroup, slots: options.lbSlots,
                                    settings: .init(proxyPort: options.proxyPort, agentMark: options.agentMark,
                                                    inboundPort: steering ? options.inboundPort : 0, tunnelPort: options.tunnelPort,
                                                    dnsPort: options.dnsPort),
                                    interfaces: options.interfaces, logger: logger)
        defer {
            if options.keepDatapath || handedOver.load(ordering: .relaxed) {
                logger.info("leaving the datapath attached and pinned (--keep-datapath)", metadata: ["bpffs": "\(options.bpffs)"])
            } else {
                datapath.remove()
                logger.info("datapath detached and unpinned", metadata: ["bpffs": "\(options.bpffs)"])
            }
        }
        status.adopted = datapath.adopted
        if datapath.agentCgroup.id == datapath.cgroupID || datapath.agentCgroup.path == KernelFeatures.cgroup2Mount() {
            logger.warning("the agent runs in \(datapath.agentCgroup.path), which other processes share: the kernel takes every socket made there for the agent's (mesh ports, STRICT). Run the agent in a cgroup of its own (a systemd unit or container has one)",
                           metadata: ["component": "dataplane"])
        }
        for f in datapath.filters {
            logger.info("TC ingress on \(f.interface): STRICT drops and plaintext steering", metadata: ["component": "dataplane"])
        }
        logger.info("datapath \(datapath.adopted ? "adopted" : "attached")", metadata: [
            "component": "dataplane", "bpffs": "\(options.bpffs)", "cgroup": "\(options.cgroup)", "programs": "\(datapath.programs.count)",
        ])

        try datapath.steer(into: inboundListeners)
        lock.withLock { self.datapath = datapath }
        monitor.setDatapath(bpffs: options.bpffs)
        restore()
        reload()
        // Connections that came while the config was read waited in the listening
        // sockets' queues; they are served now, with routes.
        proxy?.setAccepting(true)
        if options.dnsPort != 0 { listenDNS(dnsServer) }
        // systemd (Type=notify): serving from here on — listeners bound, datapath attached
        // or adopted, the last good config (or the config dir's) programmed.
        let ready = lock.withLock { status }
        // After a takeover this process is the service's main one (the unit's
        // NotifyAccess=all lets it say so).
        if Systemd.notify("READY=1\nSTATUS=serving revision \(ready.revision), \(ready.services) service(s)"
                          + (handover != nil ? "\nMAINPID=\(getpid())" : "")) {
            logger.info("told systemd: ready", metadata: ["component": "agent"])
        }
        if let handover {
            handover.confirm(logger: logger)
            serveUpgrades()
        }
        let changes = watcher.events()
        let follower = try makeFollower()
        try await withThrowingDiscardingTaskGroup { group in
            if let follower {
                group.addTask { try? await follower.client.run() }
                group.addTask { await follower.follow() }
                group.addTask { await follower.register() }
            }
            group.addTask { [self] in
                for await _ in changes.cancelOnGracefulShutdown() {
                    // Debounce: a tool writing several files produces a burst of events.
                    try? await Task.sleep(for: .milliseconds(150))
                    reload()
                }
            }
            group.addTask { [self] in
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await Task.sleep(for: .seconds(options.resyncInterval))
                    if Task.isShuttingDownGracefully { break }
                    resync()
                }
            }
            try? await gracefulShutdown()
            // An agent that handed over is not the service stopping: the new one is it now.
            if !handedOver.load(ordering: .relaxed) { Systemd.notify("STOPPING=1") }
            if let follower {
                await follower.leave()
                follower.client.shutdown()
            }
            group.cancelAll()
        }
    }

    /// Cluster mode's follower, connected to --etcd (nil without it).
    func makeFollower() throws -> ClusterFollower? {
        guard let endpoints = options.etcd else { return nil }
        let client: EtcdClient
        do { client = try EtcdClient(endpoints) } catch { throw AgentError("--etcd: \(error)") }
        let applied = lock.withLock { status.clusterRevision } ?? 0
        logger.info("cluster mode: config from etcd at \(endpoints.text)", metadata: ["component": "cluster"])
        return ClusterFollower(agent: self, client: client, node: registration(), appliedRevision: applied)
    }

    /// When this agent started (its registration says so, to tell restarts apart).
    let started = Date()

    /// What this node registers in cluster mode: where it is, its tunnel port, and the CA
    /// roots bound to it that it trusts (its CA's root; during a rotation also the next
    /// one, once it is in --trust-bundle, so peers trust the new signer before the switch).
    func registration() -> ClusterNode {
        let roots = identities?.trustBundle.pemRoots(boundTo: options.node) ?? []
        return ClusterNode(node: options.node, addresses: Self.nodeAddresses(), tunnelPort: options.tunnelPort,
                           caCertificates: roots, agentStarted: started)
    }

    /// The node's addresses, but loopback and link-local ones.
    static func nodeAddresses() -> [String] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var out: Set<String> = []
        var p = list
        while let ifa = p {
            defer { p = ifa.pointee.ifa_next }
            guard let sa = ifa.pointee.ifa_addr else { continue }
            let a: IPAddress
            if sa.pointee.sa_family == sa_family_t(AF_INET) {
                a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { s in
                    withUnsafeBytes(of: s.pointee.sin_addr) { IPAddress(family: 4, bytes: Array($0)) }
                }
                if a.bytes[0] == 127 || (a.bytes[0] == 169 && a.bytes[1] == 254) { continue }
            } else if sa.pointee.sa_family == sa_family_t(AF_INET6) {
                a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { s in
                    withUnsafeBytes(of: s.pointee.sin6_addr) { IPAddress(family: 6, bytes: Array($0)) }
                }
                if a == IPAddress("::1") || (a.bytes[0] == 0xfe && a.bytes[1] & 0xc0 == 0x80) { continue }
            } else {
                continue
            }
            out.insert(a.description)
        }
        return out.sorted()
    }

    var datapath: Datapath?
    var proxy: ProxyRuntime?
    /// The DNS server (listening for workloads unless --dns-port 0).
    var dns: DNSServer?
    /// Resolves DNS services' names.
    var resolver: ServiceResolver?
    /// Destinations opened by DNS answers for NONE services' names (REGISTRY_ONLY).
    let learnedEgress = LearnedEgress()
    /// This node's workloads' namespaces by cgroup: whose a DNS query is, for short names.
    let dnsNamespaces = DNSNamespaces()
    /// Addresses given to ServiceEntries that name none, kept in the state directory.
    let autoAddresses: AutoAddressStore
    /// A new agent asked for this one's sockets: it stops writing the maps.
    let handingOver = Atomic<Bool>(false)
    /// …and it serves on them: this one drains and leaves the datapath and the admin
    /// socket's path to it.
    let handedOver = Atomic<Bool>(false)
    /// The path this agent's binary was started from: what an upgrade (SIGHUP) starts.
    let executable: String
    /// The binary as it was invoked, made absolute: an upgrade that moves a symlink (or
    /// replaces the file) at that path starts the new binary. /proc/self/exe would name
    /// the old one's file, resolved (or deleted).
    static func invokedPath() -> String {
        let argv0 = CommandLine.arguments[0]
        if argv0.hasPrefix("/") { return argv0 }
        if argv0.contains("/") { return FileManager.default.currentDirectoryPath + "/" + argv0 }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") where access("\(dir)/\(argv0)", X_OK) == 0 {
            return "\(dir)/\(argv0)"
        }
        return (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? argv0
    }

    /// SIGHUP's handler, kept while the agent runs.
    var upgradeSignal: DispatchSourceSignal?
    private var identities: AgentIdentities?
    /// The last trust problem logged (each is logged once, not at every resync).
    private var trustProblem: String?

    /// Cluster mode: the CA roots of the other nodes' registrations.
    private var nodeRoots = NodeRoots()

    /// This node's CA's root plus the roots of --trust-bundle (and, in cluster mode, those
    /// the other nodes registered).
    func trustBundle(_ certificates: WorkloadCertificates) throws -> TrustBundle {
        do {
            return try certificates.trustBundle(trustDomain: options.trustDomain, extraRootsFile: options.trustBundle,
                                                nodeRoots: lock.withLock { nodeRoots })
        } catch {
            throw AgentError("--trust-bundle: \(error)")
        }
    }

    /// CA rotation, read at every resync: a new node CA in --ca switches the signer (all
    /// certificates are re-minted by it), and --trust-bundle adds or drops roots. A file
    /// that does not load (half-written, wrong node, not PEM) changes nothing.
    func reloadTrust() {
        guard let identities else { return }
        // What a node that left signed cannot be valid for longer than a certificate lives.
        lock.withLock { nodeRoots.prune(grace: options.certTTL) }
        let certificates = identities.certificates
        var problem: String?
        if let dir = options.caDir {
            do {
                let ca = try WorkloadCertificates.authority(caDir: dir, stateDir: options.stateDir, trustDomain: options.trustDomain,
                                                            node: options.node)
                if certificates.replaceAuthority(ca) {
                    logger.info("signer switched: workload certificates are re-minted by the CA now in \(dir)", metadata: ["component": "identity"])
                }
            } catch {
                problem = "--ca \(dir): \(error); keeping the current signer"
            }
        }
        do {
            let bundle = try trustBundle(certificates)
            if !bundle.sameTrust(as: identities.trustBundle) {
                identities.trustBundle = bundle
                // Peers verified under the old bundle are verified again under this one.
                lock.withLock { proxy }?.trustChanged()
                logger.info("trust bundle now holds \(bundle.roots.count) root(s)", metadata: ["component": "identity"])
            }
        } catch {
            problem = "\(error); keeping the current trust bundle"
        }
        if let problem, problem != trustProblem { logger.warning("\(problem)", metadata: ["component": "identity"]) }
        trustProblem = problem
    }
    /// Cluster mode: nodes registered (a registration) or left (nil); `replacingAll`: the
    /// list is every registration there is (a fresh listing). The trust follows at once.
    func nodeRegistrations(_ changes: [(node: String, registration: ClusterNode?)], replacingAll: Bool) {
        var problems: [String] = []
        lock.withLock {
            if replacingAll {
                let listed = Set(changes.map(\.node))
                for n in nodeRoots.nodes where !listed.contains(n) { nodeRoots.gone(node: n) }
            }
            for (n, r) in changes {
                if let r { problems += nodeRoots.register(node: n, pems: r.caCertificates) } else { nodeRoots.gone(node: n) }
            }
        }
        for p in problems { logger.warning("\(p)", metadata: ["component": "identity"]) }
        applying.withLock { reloadTrust() }
    }

    /// This node's workloads' certificates (minted for each commit, renewed on resync).
    var certificates: WorkloadCertificates? { identities?.certificates }

    /// Mints or renews certificates for this node's WorkloadEntries: identity
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount or "default">.
    func refreshCertificates(_ snap: Snapshot) {
        guard let certificates else { return }
        var wanted: [String: SpiffeID] = [:]
        for we in snap.workloadEntries where we.node == options.node {
            let uri = we.identity(trustDomain: options.trustDomain)
            guard let id = SpiffeID(uri: uri) else {
                logger.warning("WorkloadEntry \(we.metadata.namespace)/\(we.metadata.name) (\(we.position)): \(uri) is not a valid SPIFFE identity; fix its serviceAccount",
                               metadata: ["component": "identity"])
                continue
            }
            wanted["\(we.metadata.namespace)/\(we.metadata.name)"] = id
        }
        do {
            let n = try certificates.refresh(wanted)
            if n > 0 {
                logger.info("minted \(n) workload certificate(s)", metadata: ["component": "identity"])
                lock.withLock { proxy }?.certificatesRenewed()
            }
        } catch {
            logger.error("minting workload certificates failed: \(error)", metadata: ["component": "identity"])
        }
    }
    /// Revision and source workloads the proxy's tables were built from.
    private var proxyBuilt: (revision: UInt64, workloads: [UInt64: String], resolved: ResolvedNames)?

    /// The kernel's record of a captured connection, taken on accept (event loop threads).
    func origin(of client: SocketKey) -> ConnectionOrigin? {
        guard let maps = lock.withLock({ datapath?.maps }) else { return nil }
        do {
            guard let o = try maps.takeCapture(client: BackendAddress(address: client.address, port: client.port)) else { return nil }
            return ConnectionOrigin(destination: SocketKey(o.destination.address, o.destination.port), cgroupID: o.cgroupID)
        } catch {
            logger.error("reading weft_capture_v1 failed: \(error)", metadata: ["component": "proxy"])
            return nil
        }
    }

    /// Gives the proxy the tables of `snap` unless it already has them.
    private func updateProxy(_ snap: Snapshot, cgroupIDs: [String: UInt64]) {
        var byID: [UInt64: WorkloadEntry] = [:]
        for we in snap.workloadEntries where we.node == options.node {
            if let cg = we.cgroup, let id = cgroupIDs[cg] { byID[id] = we }
        }
        let key = (snap.revision, byID.mapValues { "\($0.metadata.namespace)/\($0.metadata.name)" }, snap.resolved)
        if let built = proxyBuilt, built.revision == key.0, built.workloads == key.1, built.resolved == key.2 { return }
        monitor.setNames(MonitorNames(snapshot: snap, cgroups: byID))
        updateDNS(snap, workloads: byID)
        proxyBuilt = key
        guard let proxy = lock.withLock({ self.proxy }) else { return }
        proxy.update(ProxyTables(snapshot: snap, workloads: byID, node: options.node, trustDomain: options.trustDomain))
    }

    /// Plaintext can be steered to the agent: it has an inbound listener.
    var steering: Bool { options.proxyPort != 0 && options.inboundPort != 0 }

    /// What the kernel should hold for `snap` on this node.
    func desiredState(_ snap: Snapshot) -> DesiredState {
        // The node's resolvers stay reachable under REGISTRY_ONLY: workloads ask them
        // directly whenever the agent's DNS server is not up.
        let resolvers = snap.outboundTrafficPolicy == .registryOnly ? readResolvConf().nameservers : []
        return DesiredState(snapshot: snap, node: options.node, steering: steering, resolvers: resolvers)
    }

    /// The kernel's counters into the registry (at scrape time): its hooks' events, and
    /// plaintext connection attempts dropped or steered by workload and reason.
    func collectKernelCounters() {
        guard let (maps, snap) = lock.withLock({ datapath.map { ($0.maps, snapshot) } }) else { return }
        var names: [IPAddress: String] = [:]
        for we in snap.workloadEntries where we.node == options.node { names[we.spec.address] = "\(we.metadata.namespace)/\(we.metadata.name)" }
        kernelMetrics.collect(maps, workloads: names, dns: options.dnsPort == 0 ? nil : lock.withLock { dns }?.currentStats())
    }

    var validation: ValidationOptions {
        var v = ValidationOptions(rootNamespace: options.rootNamespace, knownNodes: [options.node])
        v.autoAddresses = autoAddresses.current
        v.resolved = lock.withLock { resolver }?.current ?? ResolvedNames()
        return v
    }

    /// At start: the last committed revision goes back into force (the kernel may already
    /// hold it, adopted; then this changes nothing).
    func restore() {
        guard let store else { return }
        do {
            guard let record = try store.current() else { return }
            let parsed = ConfigLoader.parse(record.documents.map { ($0.yaml, "revision \(record.revision) (\($0.origin))", $0.origin) })
            let snap = try ConfigLoader.snapshot(parsed, revision: record.revision, options: validation)
            let desired = desiredState(snap)
            if apply(snap, desired, reason: "config revision \(record.revision)", cause: "restored from \(options.stateDir)") {
                lock.withLock {
                    snapshot = snap
                    self.desired = desired
                    status.contentHash = record.contentHash
                    status.clusterRevision = record.clusterRevision
                }
            }
        } catch let error as ConfigError {
            for d in error.diagnostics where d.severity == .error { logger.error("\(d)", metadata: ["component": "config"]) }
            logger.error("the last committed revision no longer validates; starting from the config dir", metadata: ["component": "config"])
        } catch {
            logger.error("\(error); starting from the config dir", metadata: ["component": "config"])
        }
    }

    /// Re-reads the config dir; with the applied resources it becomes a new revision.
    func reload() {
        let files: [String]
        do { files = try ConfigLoader.configFiles(in: options.configDir) } catch {
            logger.error("cannot list config dir \(options.configDir): \(error.localizedDescription)")
            return
        }
        let parsed = ConfigLoader.parse(paths: files)
        let result: CommitResult
        if parsed.hasErrors {
            result = .rejected(parsed.diagnostics)
        } else {
            result = commit(reason: "files") { current in
                parsed.documents + current.filter { $0.origin == Self.applied || $0.origin == ClusterKeys.origin }
            }
        }
        switch result {
        case .rejected(let diagnostics), .failed(_, let diagnostics):
            for d in diagnostics { logger.error("\(d)", metadata: ["component": "config"]) }
            if case .failed(let message, _) = result { logger.error("\(message)", metadata: ["component": "config"]) }
            logger.error("config rejected: \(keeping(lock.withLock { snapshot }))", metadata: ["component": "config"])
            lock.withLock { status.configErrors = diagnostics.filter { $0.severity == .error }.map(\.description) }
        case .committed(let snap, _), .unchanged(let snap):
            // What parsing the files warned about (the snapshot is built from their
            // documents anew, so it has only the cross-resource warnings), then those.
            for w in parsed.diagnostics where w.severity == .warning { logger.warning("\(w)", metadata: ["component": "config"]) }
            for w in snap.warnings where !parsed.diagnostics.contains(where: { $0.description == w.description }) {
                logger.warning("\(w)", metadata: ["component": "config"])
            }
            lock.withLock { status.configErrors = [] }
        }
    }

    /// Origin of resources pushed with `weft apply`.
    static let applied = "apply"

    /// A change that cannot be made to the current documents (checked under the commit lock).
    struct ChangeRefused: Error {
        var message: String
        var diagnostics: [Diagnostic] = []
    }

    enum CommitResult {
        case committed(Snapshot, datapathMs: Double)
        case unchanged(Snapshot)
        case rejected([Diagnostic])
        case failed(String, [Diagnostic])
    }

    /// The one way config changes: `change` maps the current documents to the next set,
    /// which is validated whole, programmed into the datapath, persisted, and only then
    /// made current. Any failure leaves the previous revision in force everywhere.
    func commit(reason: String, clusterRevision: UInt64? = nil, _ change: ([Document]) throws(ChangeRefused) -> [Document]) -> CommitResult {
        committing.lock()
        defer { committing.unlock() }
        let current = lock.withLock { snapshot }
        let docs: [Document]
        do { docs = try change(current.documents.keys.sorted().map { current.documents[$0]! }) } catch {
            return .failed(error.message, error.diagnostics)
        }
        let number = max(current.revision, store?.latestNumber() ?? 0) + 1
        let next: Snapshot
        do {
            next = try ConfigLoader.snapshot(.init(documents: docs, diagnostics: []), revision: number, options: validation)
        } catch {
            return .rejected(error.diagnostics)
        }
        if next.resources == current.resources && current.revision > 0 { return .unchanged(current) }
        let desired = desiredState(next)
        let tooBig = desired.capacityProblems()
        if !tooBig.isEmpty { return .failed("config does not fit the datapath: " + tooBig.joined(separator: "; "), []) }
        let start = ContinuousClock.now
        guard apply(next, desired, reason: "config revision \(next.revision)", cause: reason) else {
            return .failed("the datapath refused revision \(next.revision) (see the agent log)", [])
        }
        let took = (ContinuousClock.now - start).components
        let ms = Double(took.seconds) * 1000 + Double(took.attoseconds) / 1e15
        let hash = next.contentHash
        let cluster = clusterRevision ?? lock.withLock { status.clusterRevision }
        let record = RevisionRecord(revision: next.revision, time: Date(), reason: reason, contentHash: hash,
                                    documents: docs.map { .init(origin: $0.origin, yaml: $0.yaml) }, clusterRevision: cluster)
        do {
            try store?.commit(record)
        } catch {
            // Not durable, so not committed: put the kernel back on the previous revision.
            let previous = lock.withLock { self.desired }
            apply(current, previous, reason: "rollback of revision \(next.revision) (not persisted)")
            return .failed("\(error)", [])
        }
        lock.withLock {
            snapshot = next
            self.desired = desired
            status.contentHash = hash
            status.clusterRevision = cluster
        }
        return .committed(next, datapathMs: ms)
    }

    /// Cluster mode: the resources of cluster revision `revision` with this node's config
    /// dir. A resource both define is refused on this node (the config dir does not
    /// override the cluster, nor the cluster a node's own files); resources pushed to the
    /// admin socket before cluster mode are dropped: etcd is the one source besides the files.
    func commitCluster(_ parsed: ConfigLoader.Parsed, revision: UInt64) -> CommitResult {
        if parsed.hasErrors { return .rejected(parsed.diagnostics) }
        let result = commit(reason: "etcd revision \(revision)", clusterRevision: revision) { current throws(ChangeRefused) in
            let local = current.filter { $0.origin != Self.applied && $0.origin != ClusterKeys.origin }
            let byID = Dictionary(local.map { ($0.resource.id, $0) }, uniquingKeysWith: { a, _ in a })
            let conflicts = parsed.documents.compactMap { d -> Diagnostic? in
                guard let mine = byID[d.resource.id] else { return nil }
                return Diagnostic(.error, "CFG002", at: mine.resource.position, resource: d.resource.id.description,
                                  "is defined by \(mine.origin) in this node's config dir and by the cluster (etcd); remove one")
            }
            if !conflicts.isEmpty { throw ChangeRefused(message: "rejected", diagnostics: conflicts) }
            return local + parsed.documents
        }
        if case .unchanged = result { lock.withLock { status.clusterRevision = revision } }
        return result
    }

    /// What stays in force when a config is rejected.
    func keeping(_ current: Snapshot) -> String {
        if current.revision > 0 { return "still serving revision \(current.revision)" }
        return lock.withLock { status.adopted } ? "keeping the adopted datapath as it is" : "nothing applied yet"
    }

    func resync() {
        // Never beside a commit: a resync that read the snapshot before a commit programmed
        // the next one would put the previous revision back into the maps until the next
        // resync (seen in cluster mode: a node reported a revision whose service then did
        // not answer). A commit in progress programs the datapath itself.
        guard committing.try() else { return }
        defer { committing.unlock() }
        let (snap, desired) = lock.withLock { (snapshot, self.desired) }
        // Until a config has been accepted, the kernel's content (possibly adopted from the
        // previous agent) is the last good state: never "resync" it to nothing.
        guard snap.revision > 0 else { return }
        apply(snap, desired, reason: nil)
    }

    /// Diffs the desired state against the maps and applies the difference; false if that
    /// failed (a plan that cannot be carried out changes nothing; a failed write is
    /// retried by the next resync, which converges on the last good snapshot).
    @discardableResult
    func apply(_ snap: Snapshot, _ desired: DesiredState, reason: String?, cause: String? = nil) -> Bool {
        guard let datapath = lock.withLock({ self.datapath }) else { return false }
        // Handing over: the new agent owns the maps now (two reconcilers would each
        // allocate selection tables and overwrite the other's).
        if handingOver.load(ordering: .relaxed) { return false }
        applying.lock()
        defer { applying.unlock() }
        let start = ContinuousClock.now
        var cgroupIDs: [String: UInt64] = [:]
        for path in desired.workloads.keys {
            if let id = try? Datapath.cgroupID("\(options.cgroup)/\(path)") { cgroupIDs[path] = id }
        }
        autoAddresses.keep(snap.autoAddresses)
        lock.withLock { resolver }?.want(snap.namesToResolve)
        // The proxy learns a revision's routes before the kernel sends it connections.
        updateProxy(snap, cgroupIDs: cgroupIDs)
        reloadTrust()
        refreshCertificates(snap)
        do {
            let actual = try datapath.maps.readActual()
            // What DNS answers opened (read after the kernel: one learned meanwhile is in
            // both or in neither, never deleted as unknown).
            var desired = desired
            if desired.egressMode == .registryOnly {
                // The kernel's own record counts too: what a previous agent (or, during a
                // handover, the old one) opened stays open until it expires.
                let taken = learnedEgress.merge(actual.learnedEgress)
                if taken > 0 {
                    logger.info("REGISTRY_ONLY: \(taken) destination(s) DNS answers opened before are kept until they expire", metadata: ["component": "dns"])
                }
                desired.egress.formUnion(learnedEgress.active())
            } else {
                learnedEgress.clear()
            }
            let ops = try lock.withLock { try reconciler.plan(actual: actual, desired: desired, cgroupIDs: cgroupIDs, now: Date()) }
            if ops.isEmpty && reason == nil { return true }
            try datapath.maps.apply(ops)
            let took = (ContinuousClock.now - start).components
            let ms = Double(took.seconds) * 1000 + Double(took.attoseconds) / 1e15
            lock.withLock {
                status.revision = snap.revision
                status.services = desired.services.count
                if reason != nil { status.lastApplyMs = ms }
            }
            logger.info("\(reason ?? "resync") applied", metadata: [
                "component": "dataplane", "services": "\(desired.services.count)", "ops": "\(ops.count)", "cause": "\(cause ?? "resync")",
                "ms": "\(String(format: "%.1f", ms))",
            ])
            // Without the proxy, what only it enforces must not look active.
            let needL7 = desired.services.values.filter(\.capture).count
            if reason != nil, options.proxyPort == 0, needL7 > 0 {
                logger.warning("L7 capture is off (--proxy-port 0): \(needL7) service frontends whose VirtualService or DestinationRule needs the proxy stay on the kernel's L4 path, and those settings are not enforced",
                               metadata: ["component": "proxy"])
            }
            return true
        } catch {
            logger.error("applying \(reason ?? "resync") to the datapath failed: \(error)", metadata: ["component": "dataplane"])
            return false
        }
    }
}

/// Raises the soft limit on open files to the hard one (a service manager's default soft
/// limit is often 1024, which a few hundred proxied connections exhaust) and returns the
/// limit in force.
func raiseOpenFilesLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
    }
    return limit.rlim_cur > rlim_t(Int32.max) ? Int(Int32.max) : Int(limit.rlim_cur)
}
