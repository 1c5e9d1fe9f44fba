import Foundation
import Logging
import ServiceLifecycle
import WeftBPF
import WeftConfig
import WeftDataplane

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

    public init(configDir: String, cgroup: String, bpffs: String, adminSocket: String, node: String,
                keepDatapath: Bool, drainPeriod: Double, resyncInterval: Double, lbSlots: UInt32) {
        self.configDir = configDir
        self.cgroup = cgroup
        self.bpffs = bpffs
        self.adminSocket = adminSocket
        self.node = node
        self.keepDatapath = keepDatapath
        self.drainPeriod = drainPeriod
        self.resyncInterval = resyncInterval
        self.lbSlots = lbSlots
    }
}

/// What the agent is serving now (reported on the admin socket).
struct AgentStatus: Codable, Sendable {
    var node: String
    var revision: UInt64
    var contentHash: String
    var services: Int
    var lastApplyMs: Double?
    var configErrors: [String]
    var adopted: Bool
}

/// The node agent. Holds the last good snapshot; a config that fails validation changes
/// nothing in the kernel.
public final class Agent: Service, @unchecked Sendable {
    let options: AgentOptions
    let logger: Logger
    private let lock = NSLock()
    /// Held for a whole read-plan-write of the maps: a config reload and the periodic
    /// resync must never plan against the same state and both write (they would collide
    /// on table ids).
    private let applying = NSLock()
    private var snapshot = Snapshot.empty()
    /// The snapshot's map contents, computed once per revision (Maglev tables are costly).
    private var desired = DesiredState(snapshot: .empty(), node: "")
    private var reconciler: Reconciler
    private var status: AgentStatus

    /// Creates an agent (nothing happens until `run`).
    public init(options: AgentOptions, logger: Logger) {
        self.options = options
        self.logger = logger
        reconciler = Reconciler(drainPeriod: options.drainPeriod)
        status = AgentStatus(node: options.node, revision: 0, contentHash: "", services: 0, lastApplyMs: nil, configErrors: [], adopted: false)
    }

    /// Runs until SIGTERM/SIGINT (ServiceLifecycle), then tears down or keeps the datapath.
    public func run() async throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: options.configDir, isDirectory: &isDir), isDir.boolValue else {
            throw AgentError("config dir \(options.configDir) does not exist (--config-dir)")
        }
        // Everything that can fail without touching the kernel comes first.
        let watcher = try ConfigWatcher(directory: options.configDir)
        defer { watcher.stop() }
        let admin = try AdminServer(path: options.adminSocket, logger: logger) { [self] in
            lock.withLock { status }
        }
        defer { admin.stop() }
        let datapath = try Datapath(bpffs: options.bpffs, cgroup: options.cgroup, slots: options.lbSlots, logger: logger)
        defer {
            if options.keepDatapath {
                logger.info("leaving the datapath attached and pinned (--keep-datapath)", metadata: ["bpffs": "\(options.bpffs)"])
            } else {
                datapath.remove()
                logger.info("datapath detached and unpinned", metadata: ["bpffs": "\(options.bpffs)"])
            }
        }
        status.adopted = datapath.adopted
        logger.info("datapath \(datapath.adopted ? "adopted" : "attached")", metadata: [
            "component": "dataplane", "bpffs": "\(options.bpffs)", "cgroup": "\(options.cgroup)", "programs": "\(datapath.programs.count)",
        ])

        reload(datapath)
        let changes = watcher.events()
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { [self] in
                for await _ in changes.cancelOnGracefulShutdown() {
                    // Debounce: a tool writing several files produces a burst of events.
                    try? await Task.sleep(for: .milliseconds(150))
                    reload(datapath)
                }
            }
            group.addTask { [self] in
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await Task.sleep(for: .seconds(options.resyncInterval))
                    if Task.isShuttingDownGracefully { break }
                    resync(datapath)
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }

    /// Re-reads the config dir; a valid set becomes the new snapshot and is applied.
    func reload(_ datapath: Datapath) {
        let files: [String]
        do { files = try ConfigLoader.configFiles(in: options.configDir) } catch {
            logger.error("cannot list config dir \(options.configDir): \(error.localizedDescription)")
            return
        }
        let parsed = ConfigLoader.parse(paths: files)
        let current = lock.withLock { snapshot }
        let next: Snapshot
        do {
            next = try ConfigLoader.snapshot(parsed, revision: current.revision + 1)
        } catch {
            for d in error.diagnostics { logger.error("\(d)", metadata: ["component": "config"]) }
            logger.error("config rejected: \(keeping(current))", metadata: ["component": "config"])
            lock.withLock { status.configErrors = error.diagnostics.map(\.description) }
            return
        }
        for w in next.warnings { logger.warning("\(w)", metadata: ["component": "config"]) }
        if next.resources == current.resources && current.revision > 0 {
            lock.withLock { status.configErrors = [] }
            return
        }
        let desired = DesiredState(snapshot: next, node: options.node)
        let tooBig = desired.capacityProblems()
        if !tooBig.isEmpty {
            for p in tooBig { logger.error("config does not fit the datapath: \(p)", metadata: ["component": "config"]) }
            logger.error("config rejected: \(keeping(current))", metadata: ["component": "config"])
            lock.withLock { status.configErrors = tooBig }
            return
        }
        if apply(next, desired, datapath, reason: "config revision \(next.revision)") {
            lock.withLock {
                snapshot = next
                self.desired = desired
                status.configErrors = []
            }
        } else {
            logger.error("config rejected: \(keeping(current))", metadata: ["component": "config"])
        }
    }

    /// What stays in force when a config is rejected.
    func keeping(_ current: Snapshot) -> String {
        if current.revision > 0 { return "still serving revision \(current.revision)" }
        return lock.withLock { status.adopted } ? "keeping the adopted datapath as it is" : "nothing applied yet"
    }

    func resync(_ datapath: Datapath) {
        let (snap, desired) = lock.withLock { (snapshot, self.desired) }
        // Until a config has been accepted, the kernel's content (possibly adopted from the
        // previous agent) is the last good state: never "resync" it to nothing.
        guard snap.revision > 0 else { return }
        apply(snap, desired, datapath, reason: nil)
    }

    /// Diffs the desired state against the maps and applies the difference; false if that
    /// failed (a plan that cannot be carried out changes nothing; a failed write is
    /// retried by the next resync, which converges on the last good snapshot).
    @discardableResult
    func apply(_ snap: Snapshot, _ desired: DesiredState, _ datapath: Datapath, reason: String?) -> Bool {
        applying.lock()
        defer { applying.unlock() }
        let start = ContinuousClock.now
        var cgroupIDs: [String: UInt64] = [:]
        for path in desired.workloads.keys {
            if let id = try? Datapath.cgroupID("\(options.cgroup)/\(path)") { cgroupIDs[path] = id }
        }
        do {
            let actual = try datapath.maps.readActual()
            let ops = try lock.withLock { try reconciler.plan(actual: actual, desired: desired, cgroupIDs: cgroupIDs, now: Date()) }
            if ops.isEmpty && reason == nil { return true }
            try datapath.maps.apply(ops)
            let took = (ContinuousClock.now - start).components
            let ms = Double(took.seconds) * 1000 + Double(took.attoseconds) / 1e15
            let hash = reason == nil ? nil : snap.contentHash
            lock.withLock {
                status.revision = snap.revision
                if let hash { status.contentHash = hash }
                status.services = desired.services.count
                if reason != nil { status.lastApplyMs = ms }
            }
            logger.info("\(reason ?? "resync") applied", metadata: [
                "component": "dataplane", "services": "\(desired.services.count)", "ops": "\(ops.count)",
                "ms": "\(String(format: "%.1f", ms))",
            ])
            return true
        } catch {
            logger.error("applying \(reason ?? "resync") to the datapath failed: \(error)", metadata: ["component": "dataplane"])
            return false
        }
    }
}
