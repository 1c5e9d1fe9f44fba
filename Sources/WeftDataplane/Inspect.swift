import CLibbpf
import Foundation
import WeftBPF
import WeftConfig

/// One backend of a service as the kernel holds it.
public struct BackendListing: Codable, Sendable {
    public var id: UInt32
    public var address: String
    public var weight: UInt32
    public var state: String
    /// Slots of the selection table that name this backend.
    public var slots: Int
    /// slots / table size, in percent: the share of new connections it gets.
    public var share: Double
}

/// One frontend as the kernel holds it (like `cilium bpf lb list`).
public struct ServiceListing: Codable, Sendable {
    public var frontend: String
    public var algorithm: String
    public var svcID: UInt32
    public var tableOffset: UInt32
    public var tableSize: UInt32
    public var backends: [BackendListing]
}

extension DatapathMaps {
    /// The kernel's name for an algorithm code.
    public static func algorithmName(_ algo: UInt8) -> String {
        switch algo {
        case 0: return "random"
        case 1: return "round_robin"
        case 2: return "maglev"
        default: return "unknown(\(algo))"
        }
    }

    /// Every service with its backends, joined from services, tables and backends.
    public func listServices() throws -> [ServiceListing] {
        let actual = try readActual()
        return try actual.services.keys.sorted().map { fe in
            let s = actual.services[fe]!
            let table = try self.table(offset: s.tableOff, size: s.tableSize)
            var slots: [UInt32: Int] = [:]
            for id in table { slots[id, default: 0] += 1 }
            let backends = slots.keys.sorted().map { id -> BackendListing in
                let b = actual.backends[id]
                return BackendListing(id: id, address: b?.address.description ?? "(missing)", weight: b?.weight ?? 0,
                                      state: b == nil ? "removed" : (b!.draining ? "draining" : "active"),
                                      slots: slots[id]!, share: table.isEmpty ? 0 : Double(slots[id]!) * 100 / Double(table.count))
            }
            return ServiceListing(frontend: fe.description, algorithm: Self.algorithmName(s.algo), svcID: s.svcID,
                                  tableOffset: s.tableOff, tableSize: s.tableSize, backends: backends)
        }
    }

    /// The frontend for `addr:port` (TCP unless `proto` says otherwise).
    public func service(_ fe: Frontend) throws -> ActualState.Service? {
        try readActual().services[fe]
    }
}

/// Geometry of one pinned map, for `weft map show`.
public struct MapListing: Codable, Sendable {
    public var id: UInt32
    public var name: String
    public var type: String
    public var keySize: Int
    public var valueSize: Int
    public var maxEntries: UInt32
    public var entries: Int
    public var pin: String
}

extension BPFMap {
    /// Kernel map type as libbpf names it ("hash", "lru_hash", …).
    public var typeName: String {
        libbpf_bpf_map_type_str(bpf_map_type(type)).map { String(cString: $0) } ?? "type \(type)"
    }
}

extension DatapathMaps {
    /// Geometry and entry counts of every map.
    public func listMaps(bpffs: String) throws -> [MapListing] {
        try all.map { m in
            MapListing(id: m.id, name: m.name, type: m.typeName, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries,
                       // Arrays always hold max_entries elements; walking 4M slot keys one
                       // syscall at a time would take seconds.
                       entries: [BPF_MAP_TYPE_ARRAY.rawValue, BPF_MAP_TYPE_PERCPU_ARRAY.rawValue].contains(m.type) ? Int(m.maxEntries) : try m.keys().count,
                       pin: Datapath.mapPin(bpffs, m.name))
        }
    }
}
