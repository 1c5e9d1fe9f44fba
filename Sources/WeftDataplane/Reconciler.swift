import Foundation
import WeftConfig

/// What the kernel maps hold now, as read back from them.
public struct ActualState: Sendable, Equatable {
    /// A weft_svc_v1 entry.
    public struct Service: Sendable, Equatable {
        public var svcID: UInt32
        /// First slot of the selection table in weft_slot_v1.
        public var tableOff: UInt32
        public var tableSize: UInt32
        public var backendCount: UInt16
        public var algo: UInt8
        public var fingerprint: UInt64
        /// WEFT_SVC_F_*.
        public var flags: UInt8 = 0
    }

    /// A weft_backend_v1 entry.
    public struct Backend: Sendable, Equatable {
        public var address: BackendAddress
        public var weight: UInt32
        public var draining: Bool
    }

    /// Frontends.
    public var services: [Frontend: Service] = [:]
    /// Backends by id.
    public var backends: [UInt32: Backend] = [:]
    /// Keys of weft_rr_v1 (round-robin counters, by table offset).
    public var rrOffsets: Set<UInt32> = []
    /// Size of weft_slot_v1.
    public var slotCapacity: UInt32 = 0
    /// weft_wl_v1: cgroup id → address.
    public var workloads: [UInt64: IPAddress] = [:]
    /// weft_inpol_v1.
    public var inbound: [InboundKey: InboundRule] = [:]
    /// weft_egress_mode_v1.
    public var egressMode: OutboundTrafficPolicy = .allowAny
    /// weft_egress_v1.
    public var egress: Set<EgressRule> = []
    /// Of those, the ones a DNS answer opened, with their expiry (the entry's value).
    public var learnedEgress: [EgressRule: Date] = [:]

    public init() {}
}

/// One change to the maps. A plan applies them in the order given.
public enum DatapathOp: Sendable, Equatable {
    /// Insert or overwrite a backend (its id stays stable while it exists).
    case putBackend(id: UInt32, address: BackendAddress, weight: UInt32, draining: Bool)
    /// Write a selection table (backend ids) into free slots; reset its round-robin counter.
    case fillTable(offset: UInt32, entries: [UInt32], roundRobin: Bool)
    /// Point a frontend at a table — the one atomic switch per service.
    case putService(Frontend, ActualState.Service)
    case deleteService(Frontend)
    /// Drop the round-robin counter of a table no service uses any more.
    case deleteCounter(offset: UInt32)
    /// Drop a backend whose drain period is over (state "removed").
    case deleteBackend(id: UInt32)
    case putWorkload(cgroupID: UInt64, address: IPAddress)
    case deleteWorkload(cgroupID: UInt64)
    case putInbound(InboundKey, InboundRule)
    case deleteInbound(InboundKey)
    case putEgress(EgressRule)
    case deleteEgress(EgressRule)
    case setEgressMode(OutboundTrafficPolicy)
}

/// Diffs desired against actual state into an ordered list of map operations.
///
/// Order is what keeps every connect() consistent: backends exist before any table names
/// them, tables before any service points at them, a service switches tables in one map
/// update, old tables are reused only after a quarantine, and a backend leaves only after
/// it drained. Untouched services produce no operation at all.
public struct Reconciler: Sendable {
    /// How long a removed backend stays DRAINING before its entry is deleted.
    public var drainPeriod: TimeInterval
    /// When each draining backend started draining (an adopted one: when we first saw it).
    public private(set) var drainingSince: [UInt32: Date] = [:]
    /// Slot ranges retired from use, and since when: not reused until `quarantine` passed.
    private var retired: [(offset: UInt32, size: UInt32, since: Date)] = []
    /// BPF programs finish within microseconds; a second is ample for any connect() that
    /// read a service entry before its switch to be done with the old table.
    static let quarantine: TimeInterval = 1

    /// Creates a reconciler.
    public init(drainPeriod: TimeInterval) { self.drainPeriod = drainPeriod }

    /// The operations that take the kernel from `actual` to `desired`.
    /// The reconciler's own state changes only when a plan is returned, not when it throws.
    public mutating func plan(actual: ActualState, desired: DesiredState, cgroupIDs: [String: UInt64], now: Date) throws(ReconcileError) -> [DatapathOp] {
        var ops: [DatapathOp] = []
        var drainingSince = self.drainingSince
        var retired = self.retired

        // 1. Backends: reuse ids by address; revive a draining one that is wanted again.
        var idOf: [BackendAddress: UInt32] = [:]
        for (id, b) in actual.backends { idOf[b.address] = id }
        var wanted: [BackendAddress: UInt32] = [:] // address → weight (max over services, for display)
        for s in desired.services.values {
            for (b, w) in zip(s.backends, s.weights) { wanted[b] = max(wanted[b] ?? 0, w) }
        }
        var usedBackendIDs = Set(actual.backends.keys)
        var nextBackend: UInt32 = 1
        for addr in wanted.keys.sorted() {
            let weight = wanted[addr]!
            if let id = idOf[addr], let cur = actual.backends[id] {
                if cur.draining || cur.weight != weight {
                    ops.append(.putBackend(id: id, address: addr, weight: weight, draining: false))
                }
                drainingSince[id] = nil
            } else {
                while usedBackendIDs.contains(nextBackend) { nextBackend += 1 }
                usedBackendIDs.insert(nextBackend)
                idOf[addr] = nextBackend
                ops.append(.putBackend(id: nextBackend, address: addr, weight: weight, draining: false))
            }
        }

        // 2. Services: a new table only where the table's content changed. New tables go
        // to free slots; the ranges they replace rest in quarantine before reuse, so a
        // connect() that read the old service entry just before the switch still finds
        // the old table there.
        retired.removeAll { now.timeIntervalSince($0.since) >= Self.quarantine }
        var slots = SlotAllocator(capacity: actual.slotCapacity,
                                  used: actual.services.values.map { ($0.tableOff, $0.tableSize) } + retired.map { ($0.offset, $0.size) })
        var usedSvcIDs = Set(actual.services.values.map(\.svcID))
        var nextSvc: UInt32 = 1
        var switches: [DatapathOp] = []
        var rrOffsets = Set<UInt32>()
        for fe in desired.services.keys.sorted() {
            let d = desired.services[fe]!
            let entries = d.table.map { idOf[d.backends[Int($0)]]! }
            let fp = Self.fingerprint(algo: d.loadBalancer.algo, entries: entries)
            let roundRobin = d.loadBalancer == .roundRobin
            if let cur = actual.services[fe], cur.fingerprint == fp, cur.algo == d.loadBalancer.algo, cur.tableSize == UInt32(entries.count) {
                if roundRobin { rrOffsets.insert(cur.tableOff) }
                if cur.flags != d.flags {
                    // Capture switched on or off: same table, one entry update.
                    var s = cur
                    s.flags = d.flags
                    switches.append(.putService(fe, s))
                }
                continue
            }
            guard let offset = slots.allocate(UInt32(entries.count)) else {
                throw ReconcileError("the selection tables need more slots than weft_slot_v1 has free (\(actual.slotCapacity) in all): raise --lb-slots or use smaller Maglev tables")
            }
            let svcID: UInt32
            if let cur = actual.services[fe] {
                svcID = cur.svcID
                retired.append((cur.tableOff, cur.tableSize, now))
            } else {
                while usedSvcIDs.contains(nextSvc) { nextSvc += 1 }
                usedSvcIDs.insert(nextSvc)
                svcID = nextSvc
            }
            if !entries.isEmpty { ops.append(.fillTable(offset: offset, entries: entries, roundRobin: roundRobin)) }
            if roundRobin { rrOffsets.insert(offset) }
            switches.append(.putService(fe, .init(svcID: svcID, tableOff: offset, tableSize: UInt32(entries.count),
                                                  backendCount: UInt16(clamping: d.backends.count), algo: d.loadBalancer.algo, fingerprint: fp,
                                                  flags: d.flags)))
        }
        ops += switches
        for fe in actual.services.keys.sorted() where desired.services[fe] == nil {
            ops.append(.deleteService(fe))
            let cur = actual.services[fe]!
            retired.append((cur.tableOff, cur.tableSize, now))
        }
        for off in actual.rrOffsets.sorted() where !rrOffsets.contains(off) {
            ops.append(.deleteCounter(offset: off))
        }

        // 3. Backends nobody wants: drain, then remove.
        for id in actual.backends.keys.sorted() {
            let b = actual.backends[id]!
            guard wanted[b.address] == nil else { continue }
            if !b.draining {
                ops.append(.putBackend(id: id, address: b.address, weight: b.weight, draining: true))
                drainingSince[id] = now
            } else {
                let since = drainingSince[id] ?? now
                drainingSince[id] = since
                if now.timeIntervalSince(since) >= drainPeriod {
                    ops.append(.deleteBackend(id: id))
                    drainingSince[id] = nil
                }
            }
        }

        // 4. Workload addresses by cgroup id.
        var wantWL: [UInt64: IPAddress] = [:]
        for (path, addr) in desired.workloads { if let id = cgroupIDs[path] { wantWL[id] = addr } }
        for id in wantWL.keys.sorted() where actual.workloads[id] != wantWL[id] {
            ops.append(.putWorkload(cgroupID: id, address: wantWL[id]!))
        }
        for id in actual.workloads.keys.sorted() where wantWL[id] == nil {
            ops.append(.deleteWorkload(cgroupID: id))
        }

        // 5. Inbound rules. A workload's port entries go in before its default and come
        // out after it, so a port never falls back to a default meant for other ports.
        let changed = desired.inbound.keys.filter { actual.inbound[$0] != desired.inbound[$0] }
        for k in changed.sorted(by: { ($0.port == 0 ? 1 : 0, $0) < ($1.port == 0 ? 1 : 0, $1) }) {
            ops.append(.putInbound(k, desired.inbound[k]!))
        }
        let gone = actual.inbound.keys.filter { desired.inbound[$0] == nil }
        for k in gone.sorted(by: { ($0.port == 0 ? 0 : 1, $0) < ($1.port == 0 ? 0 : 1, $1) }) {
            ops.append(.deleteInbound(k))
        }

        // 6. Egress: what the registry knows goes in before REGISTRY_ONLY is switched on
        // (a known destination is never refused on the way), and comes out after it is
        // switched off.
        for r in desired.egress.subtracting(actual.egress).sorted() { ops.append(.putEgress(r)) }
        if actual.egressMode != desired.egressMode { ops.append(.setEgressMode(desired.egressMode)) }
        for r in actual.egress.subtracting(desired.egress).sorted() { ops.append(.deleteEgress(r)) }
        self.drainingSince = drainingSince
        self.retired = retired
        return ops
    }

    /// Identifies a table's content: algorithm and the backend id in every slot.
    public static func fingerprint(algo: UInt8, entries: [UInt32]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(algo)
        for e in entries {
            for shift in stride(from: 0, to: 32, by: 8) {
                h = (h ^ UInt64((e >> UInt32(shift)) & 0xff)) &* 0x100_0000_01b3
            }
        }
        return h
    }
}

/// A plan that cannot be carried out (nothing is applied).
public struct ReconcileError: Error, CustomStringConvertible, Sendable {
    /// One line.
    public let description: String
    init(_ d: String) { description = d }
}

/// First-fit allocation of contiguous slot ranges in weft_slot_v1.
struct SlotAllocator {
    /// Free ranges, sorted by offset, never adjacent.
    private(set) var free: [(offset: UInt32, size: UInt32)] = []

    init(capacity: UInt32, used: [(UInt32, UInt32)]) {
        var cursor: UInt32 = 0
        for (off, size) in used.filter({ $0.1 > 0 }).sorted(by: { $0.0 < $1.0 }) {
            if off > cursor { free.append((cursor, off - cursor)) }
            cursor = max(cursor, off &+ size)
        }
        if capacity > cursor { free.append((cursor, capacity - cursor)) }
    }

    /// The offset of `n` free slots, now taken; nil if no gap is large enough. An empty
    /// table needs no slots (offset 0, size 0 is never read).
    mutating func allocate(_ n: UInt32) -> UInt32? {
        if n == 0 { return 0 }
        guard let i = free.firstIndex(where: { $0.size >= n }) else { return nil }
        let off = free[i].offset
        if free[i].size == n { free.remove(at: i) } else { free[i] = (off + n, free[i].size - n) }
        return off
    }
}
