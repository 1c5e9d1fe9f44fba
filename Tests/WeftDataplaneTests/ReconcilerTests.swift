import Foundation
import Testing
import WeftConfig
@testable import WeftDataplane

/// Applies ops to an in-memory ActualState the way DatapathMaps.apply does to the kernel;
/// `tables` is the slot array.
func simulate(_ s: inout ActualState, _ ops: [DatapathOp], tables: inout [UInt32: [UInt32]]) {
    if s.slotCapacity == 0 { s.slotCapacity = 1 << 20 }
    for op in ops {
        switch op {
        case .putBackend(let id, let a, let w, let d): s.backends[id] = .init(address: a, weight: w, draining: d)
        case .fillTable(let off, let e, let rr): tables[off] = e; if rr { s.rrOffsets.insert(off) }
        case .putService(let fe, let v): s.services[fe] = v
        case .deleteService(let fe): s.services[fe] = nil
        case .deleteCounter(let off): s.rrOffsets.remove(off)
        case .deleteBackend(let id): s.backends[id] = nil
        case .putWorkload(let cg, let a): s.workloads[cg] = a
        case .deleteWorkload(let cg): s.workloads[cg] = nil
        case .putInbound(let k, let r): s.inbound[k] = r
        case .deleteInbound(let k): s.inbound[k] = nil
        case .putEgress(let r): s.egress.insert(r)
        case .deleteEgress(let r): s.egress.remove(r)
        case .setEgressMode(let m): s.egressMode = m
        }
    }
}

/// An empty kernel with the default slot array.
func fresh() -> ActualState {
    var a = ActualState()
    a.slotCapacity = 1 << 20
    return a
}

func snapshot(_ services: [(vip: String, backends: [String])], lb: String = "") throws -> Snapshot {
    var docs: [String] = []
    for (i, s) in services.enumerated() {
        docs.append("""
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: s\(i)}
        spec:
          hosts: [s\(i)]
          addresses: [\(s.vip)]
          ports: [{number: 80, name: http, targetPort: 8080}]
          resolution: STATIC
          endpoints: [\(s.backends.map { "{address: \($0)}" }.joined(separator: ", "))]
        """)
    }
    return try ConfigLoader.snapshot(ConfigLoader.parse(text: docs.joined(separator: "\n---\n"), file: "t.yaml"), revision: 1)
}

@Suite struct ReconcilerTests {
    let t0 = Date(timeIntervalSince1970: 1_000_000)

    @Test func firstApplyCreatesInOrderAndSecondApplyIsANoOp() throws {
        var r = Reconciler(drainPeriod: 10)
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        let desired = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1", "10.0.0.2", "10.0.0.3"])]), node: "n")
        let ops = try r.plan(actual: actual, desired: desired, cgroupIDs: [:], now: t0)
        #expect(ops.count == 5)
        let firstService = ops.firstIndex { if case .putService = $0 { return true } else { return false } }!
        let lastBackend = ops.lastIndex { if case .putBackend = $0 { return true } else { return false } }!
        let table = ops.firstIndex { if case .fillTable = $0 { return true } else { return false } }!
        #expect(lastBackend < table && table < firstService)
        simulate(&actual, ops, tables: &tables)
        #expect(try r.plan(actual: actual, desired: desired, cgroupIDs: [:], now: t0).isEmpty)
    }

    @Test func changingOneServiceLeavesTheOthersUntouched() throws {
        var r = Reconciler(drainPeriod: 10)
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        let before = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1", "10.0.0.2"]), ("10.96.0.2", ["10.0.1.1"])]), node: "n")
        simulate(&actual, try r.plan(actual: actual, desired: before, cgroupIDs: [:], now: t0), tables: &tables)
        let untouched = actual.services.first { $0.key.address.description == "10.96.0.2" }!
        let changed = actual.services.first { $0.key.address.description == "10.96.0.1" }!
        let after = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1", "10.0.0.2", "10.0.0.9"]), ("10.96.0.2", ["10.0.1.1"])]), node: "n")
        let ops = try r.plan(actual: actual, desired: after, cgroupIDs: [:], now: t0)
        for op in ops {
            if case .putService(let fe, _) = op { #expect(fe.address.description == "10.96.0.1") }
            if case .fillTable(let off, _, _) = op {
                // The new table never overwrites a table in use, nor the one it replaces.
                #expect(off >= untouched.value.tableOff + untouched.value.tableSize || off + 3 <= untouched.value.tableOff)
                #expect(off >= changed.value.tableOff + changed.value.tableSize || off + 3 <= changed.value.tableOff)
            }
        }
        simulate(&actual, ops, tables: &tables)
        #expect(actual.services[untouched.key] == untouched.value)
        #expect(actual.services[changed.key]!.tableSize == 3)
    }

    @Test func retiredSlotsAreReusedOnlyAfterQuarantine() throws {
        var r = Reconciler(drainPeriod: 10)
        var actual = fresh()
        actual.slotCapacity = 4 // room for one 2-slot table and one replacement
        var tables: [UInt32: [UInt32]] = [:]
        let a = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1", "10.0.0.2"])]), node: "n")
        let b = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.3", "10.0.0.4"])]), node: "n")
        simulate(&actual, try r.plan(actual: actual, desired: a, cgroupIDs: [:], now: t0), tables: &tables)
        simulate(&actual, try r.plan(actual: actual, desired: b, cgroupIDs: [:], now: t0), tables: &tables)
        // Both halves are taken now: the live table and the quarantined one.
        #expect(throws: ReconcileError.self) { try r.plan(actual: actual, desired: a, cgroupIDs: [:], now: t0 + 0.5) }
        let later = try r.plan(actual: actual, desired: a, cgroupIDs: [:], now: t0 + 2)
        #expect(later.contains { if case .fillTable(0, _, _) = $0 { return true } else { return false } })
    }

    @Test func slotAllocatorFirstFit() {
        var s = SlotAllocator(capacity: 100, used: [(10, 10), (50, 5), (0, 0)])
        #expect(s.allocate(10) == 0)
        #expect(s.allocate(25) == 20)
        #expect(s.allocate(30) == 55)
        #expect(s.allocate(20) == nil)
        #expect(s.allocate(5) == 45)
        #expect(s.allocate(0) == 0)
    }

    @Test func removedBackendDrainsThenGoes() throws {
        var r = Reconciler(drainPeriod: 10)
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        simulate(&actual, try r.plan(actual: actual, desired: DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1", "10.0.0.2"])]), node: "n"), cgroupIDs: [:], now: t0), tables: &tables)
        let goneID = actual.backends.first { $0.value.address.address.description == "10.0.0.2" }!.key
        let desired = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1"])]), node: "n")
        let ops = try r.plan(actual: actual, desired: desired, cgroupIDs: [:], now: t0)
        let switchAt = ops.firstIndex { if case .putService = $0 { return true } else { return false } }!
        let drainAt = ops.firstIndex { $0 == .putBackend(id: goneID, address: actual.backends[goneID]!.address, weight: 1, draining: true) }!
        #expect(switchAt < drainAt, "the table must stop naming the backend before it drains")
        simulate(&actual, ops, tables: &tables)
        #expect(actual.backends[goneID]?.draining == true)
        let svc = actual.services.values.first!
        #expect(!tables[svc.tableOff]!.contains(goneID))
        // Still draining before the period ends, removed after.
        #expect(try r.plan(actual: actual, desired: desired, cgroupIDs: [:], now: t0 + 5).isEmpty)
        let later = try r.plan(actual: actual, desired: desired, cgroupIDs: [:], now: t0 + 10)
        #expect(later == [.deleteBackend(id: goneID)])
    }

    @Test func backendWantedAgainWhileDrainingIsRevived() throws {
        var r = Reconciler(drainPeriod: 10)
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        let two = DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1", "10.0.0.2"])]), node: "n")
        simulate(&actual, try r.plan(actual: actual, desired: two, cgroupIDs: [:], now: t0), tables: &tables)
        let ids = Set(actual.backends.keys)
        simulate(&actual, try r.plan(actual: actual, desired: DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1"])]), node: "n"), cgroupIDs: [:], now: t0), tables: &tables)
        simulate(&actual, try r.plan(actual: actual, desired: two, cgroupIDs: [:], now: t0 + 1), tables: &tables)
        #expect(Set(actual.backends.keys) == ids, "a revived backend keeps its id")
        #expect(actual.backends.values.allSatisfy { !$0.draining })
        #expect(try r.plan(actual: actual, desired: two, cgroupIDs: [:], now: t0 + 100).isEmpty)
    }

    @Test func removedServicesAndStaleCountersAreCleanedUp() throws {
        var r = Reconciler(drainPeriod: 0)
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        simulate(&actual, try r.plan(actual: actual, desired: DesiredState(snapshot: try snapshot([("10.96.0.1", ["10.0.0.1"])]), node: "n"), cgroupIDs: [:], now: t0), tables: &tables)
        actual.rrOffsets.insert(77) // left behind by an apply that crashed half-way
        let empty = DesiredState(snapshot: .empty(), node: "n")
        var ops = try r.plan(actual: actual, desired: empty, cgroupIDs: [:], now: t0)
        simulate(&actual, ops, tables: &tables)
        #expect(actual.services.isEmpty && actual.rrOffsets.isEmpty)
        ops = try r.plan(actual: actual, desired: empty, cgroupIDs: [:], now: t0)
        simulate(&actual, ops, tables: &tables)
        #expect(actual.backends.isEmpty)
    }

    @Test func workloadsAreKeyedByCgroupID() throws {
        var r = Reconciler(drainPeriod: 0)
        let yaml = """
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: w, annotations: {weft.io/node: n1, weft.io/cgroup: app/w}}
        spec: {address: 10.0.0.5}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: elsewhere, annotations: {weft.io/node: n2, weft.io/cgroup: app/x}}
        spec: {address: 10.0.0.6}
        """
        let desired = DesiredState(snapshot: try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "t"), revision: 1), node: "n1")
        #expect(desired.workloads == ["app/w": IPAddress("10.0.0.5")!])
        let ops = try r.plan(actual: fresh(), desired: desired, cgroupIDs: ["app/w": 42], now: t0)
        #expect(ops == [.putWorkload(cgroupID: 42, address: IPAddress("10.0.0.5")!)])
    }
}
