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
    public static let names = ["weft_svc_v1", "weft_backend_v1", "weft_lb_v1", "weft_rr_v1", "weft_revnat_v1", "weft_wl_v1", "weft_stats_v1"]

    public let svc: BPFMap
    public let backend: BPFMap
    public let lb: BPFMap
    public let rr: BPFMap
    public let revnat: BPFMap
    public let wl: BPFMap
    public let stats: BPFMap

    init(lookup: (String) throws -> BPFMap) throws {
        svc = try lookup("weft_svc_v1")
        backend = try lookup("weft_backend_v1")
        lb = try lookup("weft_lb_v1")
        rr = try lookup("weft_rr_v1")
        revnat = try lookup("weft_revnat_v1")
        wl = try lookup("weft_wl_v1")
        stats = try lookup("weft_stats_v1")
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
    public var all: [BPFMap] { [svc, backend, lb, rr, revnat, wl, stats] }

    // MARK: reading

    /// Reads the state the reconciler diffs against.
    public func readActual() throws -> ActualState {
        var s = ActualState()
        for (k, v) in try svc.entries(weft_svc_key.self, weft_svc_val.self) {
            if let fe = k.frontend { s.services[fe] = v.service }
        }
        for (k, v) in try backend.entries(UInt32.self, weft_backend_val.self) { s.backends[k] = v.backend }
        s.tableIDs = Set(try lb.keys().map { BPFMap.value(UInt32.self, from: $0) })
        for (k, v) in try wl.entries(UInt64.self, weft_wl_val.self) { s.workloads[k] = v.address }
        return s
    }

    /// The selection table of a service: backend id per slot.
    public func table(id: UInt32) throws -> [UInt32] {
        guard let innerID: UInt32 = try lb.lookup(id) else { return [] }
        let inner = try BPFMap(id: innerID)
        var out = [UInt32](repeating: 0, count: Int(inner.maxEntries))
        var keys = (0..<inner.maxEntries).map { $0 }
        var count = inner.maxEntries
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        var inBatch: UInt32 = 0
        let rc = bpf_map_lookup_batch(inner.fd, nil, &inBatch, &keys, &out, &count, &opts)
        if rc != 0 && rc != -ENOENT {
            // Older kernels lack batch lookups on arrays: fall back to one lookup per slot.
            for i in 0..<inner.maxEntries { out[Int(i)] = try inner.lookup(i) ?? 0 }
        }
        return out
    }

    /// Per-CPU counters summed, by name.
    public func counters() throws -> [(name: String, value: UInt64)] {
        try statNames.enumerated().map { i, name in
            (name, try stats.lookupPerCPU(UInt32(i), as: UInt64.self).reduce(0, +))
        }
    }

    // MARK: writing

    /// Applies a plan in order. A failure stops at that operation: everything before it is
    /// in place and consistent (see Reconciler), and the next reconcile resumes from there.
    public func apply(_ ops: [DatapathOp]) throws {
        for op in ops {
            switch op {
            case .putBackend(let id, let addr, let weight, let draining):
                try backend.update(id, weft_backend_val(addr, weight: weight, draining: draining))
            case .createTable(let id, let entries, let rr):
                let inner = try BPFMap.create(type: BPF_MAP_TYPE_ARRAY, name: "weft_lb_tbl", keySize: 4, valueSize: 4,
                                              maxEntries: UInt32(max(entries.count, 1)), flags: UInt32(BPF_F_INNER_MAP))
                if !entries.isEmpty { try inner.fillArray(entries) }
                if rr { try self.rr.update(id, UInt32(0)) }
                try lb.update(id, UInt32(inner.fd), flags: UInt64(BPF_NOEXIST))
            case .putService(let fe, let s):
                try svc.update(weft_svc_key(fe), weft_svc_val(s))
            case .deleteService(let fe):
                try svc.delete(weft_svc_key(fe))
            case .deleteTable(let id):
                try lb.delete(id)
                try rr.delete(id)
            case .deleteBackend(let id):
                try backend.delete(id)
            case .putWorkload(let cg, let addr):
                try wl.update(cg, weft_wl_val(addr))
            case .deleteWorkload(let cg):
                try wl.delete(cg)
            }
        }
    }
}
