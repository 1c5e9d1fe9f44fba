import Foundation
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
                return (fe.description, "svc \(v.svc_id) table \(v.table_off)+\(v.table_size) backends \(v.backend_count) \(DatapathMaps.algorithmName(v.algo)) fp \(String(v.fingerprint, radix: 16))")
            }.sorted { $0.0 < $1.0 }
        case "weft_backend_v1":
            return try maps.backend.entries(UInt32.self, weft_backend_val.self).sorted { $0.key < $1.key }.map { k, v in
                let b = v.backend
                return ("\(k)", "\(b.address) weight \(b.weight) \(b.draining ? "draining" : "active")")
            }
        case "weft_slot_v1":
            // Only the slots some service's table uses; the rest of the array is free space.
            let services = try maps.readActual().services
            return try services.keys.sorted().flatMap { fe -> [(String, String)] in
                let s = services[fe]!
                return try maps.table(offset: s.tableOff, size: s.tableSize).enumerated().map {
                    ("slot \(s.tableOff + UInt32($0.offset))", "backend \($0.element) (\(fe))")
                }
            }
        case "weft_rr_v1":
            return try maps.rr.entries(UInt32.self, UInt32.self).sorted { $0.key < $1.key }.map { ("table at slot \($0.key)", "position \($0.value)") }
        case "weft_revnat_v1":
            return try maps.revnat.entries(weft_revnat_key.self, weft_revnat_val.self).map { ($0.key.text, "vip \($0.value.text)") }.sorted { $0.0 < $1.0 }
        case "weft_wl_v1":
            return try maps.wl.entries(UInt64.self, weft_wl_val.self).sorted { $0.key < $1.key }.map { ("cgroup \($0.key)", "\($0.value.address)") }
        case "weft_pending_v1":
            return try maps.pending.entries(UInt64.self, weft_capture_val.self).sorted { $0.key < $1.key }.map {
                ("cookie \($0.key)", "\($0.value.origin)")
            }
        case "weft_capture_v1":
            return try maps.capture.entries(weft_capture_key.self, weft_capture_val.self).map {
                ("client \($0.key.client)", "\($0.value.origin)")
            }.sorted { $0.0 < $1.0 }
        case "weft_inpol_v1":
            return try maps.inpol.entries(weft_inpol_key.self, weft_inpol_val.self).map { ($0.key.key, $0.value.rule) }
                .sorted { $0.0 < $1.0 }.map { ($0.0.description, $0.1.description) }
        case "weft_inctr_v1":
            return try maps.inboundCounts().map { ("\($0.address) \($0.reason)", "\($0.count)") }
        case "weft_stats_v1":
            return try maps.counters().map { ($0.name, "\($0.value)") }
        case "weft_egress_mode_v1":
            return [("mode", try maps.readActual().egressMode.rawValue)]
        case "weft_egress_v1":
            return try maps.egress.entries(weft_egress_key.self, UInt32.self).map { ($0.key.rule, $0.value) }.sorted { $0.0 < $1.0 }
                .map { ($0.0.description, $0.1 == 0 ? "registered" : "learned from a DNS answer, until \(Date(timeIntervalSince1970: TimeInterval($0.1)))") }
        default:
            throw BPFError("no map \(name)")
        }
    }
}
