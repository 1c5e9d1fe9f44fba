import CLibbpf
import CWeftABI
import Foundation
import WeftBPF
import WeftConfig

/// The datapath's maps, opened either from a loaded object (the agent) or from their pins
/// (inspect commands, with or without a running agent). One reader of kernel state for
/// both, so what `weft service list` shows is what the reconciler works from.
public final class DatapathMaps: @unchecked Sendable {
    /// Map names as in bpf/lib/maps.h, in display order.
    public static let names = ["weft_svc_v1", "weft_backend_v1", "weft_slot_v1", "weft_rr_v1", "weft_revnat_v1", "weft_wl_v1", "weft_stats_v1",
                               "weft_pending_v1", "weft_capture_v1", "weft_inpol_v1", "weft_inctr_v1",
                               "weft_egress_mode_v1", "weft_egress_v1"]
    /// The flow event maps (bpf/lib/events.h): the ring buffer `weft monitor` reads, the
    /// reader's deadline, the lost-event counter. Pinned with the others, shared by the
    /// TC programs, but not state the reconciler or `weft map` works on.
    public static let eventMaps = ["weft_events_v1", "weft_evctl_v1", "weft_evlost_v1"]

    public let svc: BPFMap
    public let backend: BPFMap
    public let slot: BPFMap
    public let rr: BPFMap
    public let revnat: BPFMap
    public let wl: BPFMap
    public let stats: BPFMap
    public let pending: BPFMap
    public let capture: BPFMap
    public let inpol: BPFMap
    public let inctr: BPFMap
    public let egressMode: BPFMap
    public let egress: BPFMap

    init(lookup: (String) throws -> BPFMap) throws {
        svc = try lookup("weft_svc_v1")
        backend = try lookup("weft_backend_v1")
        slot = try lookup("weft_slot_v1")
        rr = try lookup("weft_rr_v1")
        revnat = try lookup("weft_revnat_v1")
        wl = try lookup("weft_wl_v1")
        stats = try lookup("weft_stats_v1")
        pending = try lookup("weft_pending_v1")
        capture = try lookup("weft_capture_v1")
        inpol = try lookup("weft_inpol_v1")
        inctr = try lookup("weft_inctr_v1")
        egressMode = try lookup("weft_egress_mode_v1")
        egress = try lookup("weft_egress_v1")
    }

    /// Opens the maps pinned under `bpffs` (DIR/maps/NAME).
    public convenience init(pinnedUnder bpffs: String) throws {
        try self.init { name in
            let path = Datapath.mapPin(bpffs, name)
            if access(path, F_OK) != 0 {
                throw BPFError("no weft datapath at \(bpffs) (\(path) is missing): the agent is probably not running; start `weft agent` or pass --bpffs")
            }
            return try BPFMap(pinnedAt: path)
        }
    }

    /// All maps by name.
    public var all: [BPFMap] { [svc, backend, slot, rr, revnat, wl, stats, pending, capture, inpol, inctr, egressMode, egress] }

    /// Takes the origin the kernel recorded for a captured connection from `client` (the
    /// accepted socket's peer); nil if this connection was not captured by weft.
    public func takeCapture(client: BackendAddress) throws -> CapturedOrigin? {
        try capture.lookupAndDelete(keyBytes: BPFMap.bytes(of: weft_capture_key(client)))
            .map { BPFMap.value(weft_capture_val.self, from: $0).origin }
    }

    /// The address of the workload whose cgroup is `cgroup` (weft_wl_v1), if it is one.
    public func workloadAddress(cgroup: UInt64) -> IPAddress? {
        (try? wl.lookup(cgroup, as: weft_wl_val.self))?.address
    }

    // MARK: reading

    /// Reads the state the reconciler diffs against.
    public func readActual() throws -> ActualState {
        var s = ActualState()
        for (k, v) in try svc.entries(weft_svc_key.self, weft_svc_val.self) {
            if let fe = k.frontend { s.services[fe] = v.service }
        }
        for (k, v) in try backend.entries(UInt32.self, weft_backend_val.self) { s.backends[k] = v.backend }
        s.rrOffsets = Set(try rr.keys().map { BPFMap.value(UInt32.self, from: $0) })
        s.slotCapacity = slot.maxEntries
        for (k, v) in try wl.entries(UInt64.self, weft_wl_val.self) { s.workloads[k] = v.address }
        for (k, v) in try inpol.entries(weft_inpol_key.self, weft_inpol_val.self) { s.inbound[k.key] = v.rule }
        s.egressMode = try egressMode.lookup(UInt32(0), as: UInt32.self) == WEFT_EGRESS_REGISTRY_ONLY.rawValue ? .registryOnly : .allowAny
        for (k, v) in try egress.entries(weft_egress_key.self, UInt32.self) {
            s.egress.insert(k.rule)
            if v != 0 { s.learnedEgress[k.rule] = Date(timeIntervalSince1970: TimeInterval(v)) }
        }
        return s
    }

    /// Opens each rule for REGISTRY_ONLY as learned from a DNS answer, until its date
    /// (the value, in Unix seconds; 0 is a registered destination).
    public func openEgress(_ rules: [(EgressRule, until: Date)]) throws {
        for (r, until) in rules { try egress.update(weft_egress_key(r), Self.egressValue(until)) }
    }

    static func egressValue(_ until: Date) -> UInt32 {
        UInt32(clamping: max(1, Int(until.timeIntervalSince1970.rounded(.up))))
    }

    /// A selection table: the backend id in each of its slots.
    public func table(offset: UInt32, size: UInt32) throws -> [UInt32] {
        try slot.readArray(offset: offset, count: size)
    }

    /// Per-CPU counters summed, by name.
    public func counters() throws -> [(name: String, value: UInt64)] {
        try statNames.enumerated().map { i, name in
            (name, try stats.lookupPerCPU(UInt32(i), as: UInt64.self).reduce(0, +))
        }
    }

    /// Plaintext connection attempts dropped or steered, by workload address and reason.
    public func inboundCounts() throws -> [InboundCount] {
        try inctr.keys().compactMap { raw -> InboundCount? in
            let k = BPFMap.value(weft_inctr_key.self, from: raw)
            guard Int(k.reason) < inboundReasonNames.count else { return nil }
            let total = try inctr.lookupPerCPU(k, as: UInt64.self).reduce(0, +)
            return InboundCount(address: IPAddress(family: k.family, bytes: addrBytes(k.addr)), reason: inboundReasonNames[Int(k.reason)], count: total)
        }.sorted { ($0.address, $0.reason) < ($1.address, $1.reason) }
    }

    // MARK: writing

    /// Applies a plan in order. A failure stops at that operation: everything before it is
    /// in place and consistent (see Reconciler), and the next reconcile resumes from there.
    public func apply(_ ops: [DatapathOp]) throws {
        for op in ops { try applyOne(op) }
    }

    private func applyOne(_ op: DatapathOp) throws {
        switch op {
        case .putBackend(let id, let addr, let weight, let draining):
            try backend.update(id, weft_backend_val(addr, weight: weight, draining: draining))
        case .putService(let fe, let s):
            try svc.update(weft_svc_key(fe), weft_svc_val(s))
        case .deleteService(let fe):
            try svc.delete(weft_svc_key(fe))
        case .deleteBackend(let id):
            try backend.delete(id)
        case .putWorkload(let cg, let addr):
            try wl.update(cg, weft_wl_val(addr))
        case .deleteWorkload(let cg):
            try wl.delete(cg)
        case .fillTable(let offset, let entries, let roundRobin):
            // One batch syscall per table: a Maglev table is 16381 slots.
            try slot.fillArray(entries, offset: offset)
            if roundRobin { try rr.update(offset, UInt32(0)) }
        case .deleteCounter(let offset):
            try rr.delete(offset)
        case .putInbound(let k, let r):
            try inpol.update(weft_inpol_key(k), weft_inpol_val(r))
        case .deleteInbound(let k):
            try inpol.delete(weft_inpol_key(k))
        case .putEgress(let r):
            try egress.update(weft_egress_key(r), UInt32(0))
        case .deleteEgress(let r):
            try egress.delete(weft_egress_key(r))
        case .setEgressMode(let mode):
            try egressMode.update(UInt32(0), mode == .registryOnly ? WEFT_EGRESS_REGISTRY_ONLY.rawValue : WEFT_EGRESS_ALLOW_ANY.rawValue)
        }
    }
}
