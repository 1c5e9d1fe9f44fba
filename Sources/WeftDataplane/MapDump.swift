import CLibbpf
import CWeftABI
import WeftBPF
import WeftConfig

/// Decodes every entry of one of weft's maps into (key, value) text.
public enum MapDump {
    public static func rows(_ maps: DatapathMaps, _ name: String) throws -> [(String, String)] {
        switch name {
        case "weft_svc_v1":
            return try maps.svc.entries(weft_svc_key.self, weft_svc_val.self).compactMap { k, v in
                guard let fe = k.frontend else { return nil }
                return (fe.description, "svc \(v.svc_id) table \(v.table_id) size \(v.table_size) backends \(v.backend_count) \(DatapathMaps.algorithmName(v.algo)) fp \(String(v.fingerprint, radix: 16))")
            }.sorted { $0.0 < $1.0 }
        case "weft_backend_v1":
            return try maps.backend.entries(UInt32.self, weft_backend_val.self).sorted { $0.key < $1.key }.map { k, v in
                let b = v.backend
                return ("\(k)", "\(b.address) weight \(b.weight) \(b.draining ? "draining" : "active")")
            }
        case "weft_lb_v1":
            return try maps.lb.entries(UInt32.self, UInt32.self).sorted { $0.key < $1.key }.map { k, inner in
                let size = (try? BPFMap(id: inner).maxEntries).map { "\($0) slots" } ?? "?"
                return ("table \(k)", "inner map id \(inner), \(size)")
            }
        case "weft_rr_v1":
            return try maps.rr.entries(UInt32.self, UInt32.self).sorted { $0.key < $1.key }.map { ("table \($0.key)", "position \($0.value)") }
        case "weft_revnat_v1":
            return try maps.revnat.entries(weft_revnat_key.self, weft_revnat_val.self).map { ($0.key.text, "vip \($0.value.text)") }.sorted { $0.0 < $1.0 }
        case "weft_wl_v1":
            return try maps.wl.entries(UInt64.self, weft_wl_val.self).sorted { $0.key < $1.key }.map { ("cgroup \($0.key)", "\($0.value.address)") }
        case "weft_stats_v1":
            return try maps.counters().map { ($0.name, "\($0.value)") }
        default:
            throw BPFError("no map \(name)")
        }
    }
}
