import Foundation
import WeftConfig

/// What the kernel maps hold now, as read back from them.
public struct ActualState: Sendable, Equatable {
    /// A weft_svc_v1 entry.
    public struct Service: Sendable, Equatable {
        public var svcID: UInt32
        public var tableID: UInt32
        public var tableSize: UInt32
        public var backendCount: UInt16
        public var algo: UInt8
        public var fingerprint: UInt64
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
    /// Keys of weft_lb_v1 (every table that exists, referenced or not).
    public var tableIDs: Set<UInt32> = []
    /// weft_wl_v1: cgroup id → address.
    public var workloads: [UInt64: IPAddress] = [:]

    public init() {}
}

/// One change to the maps. A plan applies them in the order given.
public enum DatapathOp: Sendable, Equatable {
    /// Insert or overwrite a backend (its id stays stable while it exists).
    case putBackend(id: UInt32, address: BackendAddress, weight: UInt32, draining: Bool)
    /// Create a selection table (entries are backend ids) under a fresh table id.
    case createTable(id: UInt32, entries: [UInt32], roundRobin: Bool)
    /// Point a frontend at a table — the one atomic switch per service.
    case putService(Frontend, ActualState.Service)
    case deleteService(Frontend)
    case deleteTable(id: UInt32)
    /// Drop a backend whose drain period is over (state "removed").
    case deleteBackend(id: UInt32)
    case putWorkload(cgroupID: UInt64, address: IPAddress)
    case deleteWorkload(cgroupID: UInt64)
}

/// Diffs desired against actual state into an ordered list of map operations.
///
/// Order is what keeps every connect() consistent: backends exist before any table names
/// them, tables before any service points at them, a service switches tables in one map
/// update, old tables go only after no service points at them, and a backend leaves only
/// after it drained. Untouched services produce no operation at all.
public struct Reconciler: Sendable {
    /// How long a removed backend stays DRAINING before its entry is deleted.
    public var drainPeriod: TimeInterval
    /// When each draining backend started draining (an adopted one: when we first saw it).
    public private(set) var drainingSince: [UInt32: Date] = [:]

    /// Creates a reconciler.
    public init(drainPeriod: TimeInterval) { self.drainPeriod = drainPeriod }

    /// The operations that take the kernel from `actual` to `desired`.
    public mutating func plan(actual: ActualState, desired: DesiredState, cgroupIDs: [String: UInt64], now: Date) -> [DatapathOp] {
        var ops: [DatapathOp] = []

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

        // 2. Services: a new table only where the table's content changed.
        var usedTables = actual.tableIDs.union(actual.services.values.map(\.tableID))
        var nextTable: UInt32 = 1
        var usedSvcIDs = Set(actual.services.values.map(\.svcID))
        var nextSvc: UInt32 = 1
        var referencedTables = Set<UInt32>()
        var switches: [DatapathOp] = []
        var retiredTables: [UInt32] = []
        for fe in desired.services.keys.sorted() {
            let d = desired.services[fe]!
            let entries = d.table.map { idOf[d.backends[Int($0)]]! }
            let fp = Self.fingerprint(algo: d.loadBalancer.algo, entries: entries)
            if let cur = actual.services[fe], cur.fingerprint == fp, cur.algo == d.loadBalancer.algo,
               actual.tableIDs.contains(cur.tableID) {
                referencedTables.insert(cur.tableID)
                continue
            }
            while usedTables.contains(nextTable) { nextTable += 1 }
            usedTables.insert(nextTable)
            referencedTables.insert(nextTable)
            let svcID: UInt32
            if let cur = actual.services[fe] {
                svcID = cur.svcID
                retiredTables.append(cur.tableID)
            } else {
                while usedSvcIDs.contains(nextSvc) { nextSvc += 1 }
                usedSvcIDs.insert(nextSvc)
                svcID = nextSvc
            }
            ops.append(.createTable(id: nextTable, entries: entries, roundRobin: d.loadBalancer == .roundRobin))
            switches.append(.putService(fe, .init(svcID: svcID, tableID: nextTable, tableSize: UInt32(entries.count),
                                                  backendCount: UInt16(clamping: d.backends.count), algo: d.loadBalancer.algo, fingerprint: fp)))
        }
        ops += switches
        for fe in actual.services.keys.sorted() where desired.services[fe] == nil {
            ops.append(.deleteService(fe))
        }
        // Every table no service points at any more, including orphans of a crashed apply.
        for id in actual.tableIDs.union(retiredTables).sorted() where !referencedTables.contains(id) {
            ops.append(.deleteTable(id: id))
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
