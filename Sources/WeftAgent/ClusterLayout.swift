import Foundation
import WeftConfig
import WeftStore

/// Cluster mode's keys in etcd (DESIGN.md, "Cluster mode"). Versioned (`v1`): a layout that
/// changes gets new prefixes, so agents of two versions never misread each other.
public enum ClusterKeys {
    /// Every resource of the config, and the revision record, under one prefix: one list
    /// reads a consistent config, one watch follows it.
    public static let config = "weft/config/v1/"
    /// The config revision in force: `ClusterRevision`, moved in the same transaction as
    /// every resource it names (the compare-and-swap point).
    public static let revision = config + "revision"
    /// `ClusterRevision` of each recent revision, by number (for history and rollback).
    public static let history = "weft/history/v1/"
    /// Each live node's registration (`ClusterNode`), on its lease.
    public static let nodes = "weft/nodes/v1/"
    /// Each live node's report (`ClusterNodeStatus`), on the same lease.
    public static let status = "weft/status/v1/"

    /// A resource's key: `weft/config/v1/<kind>/<namespace>/<name>`.
    public static func resource(_ id: ResourceID) -> String { "\(config)\(id.kind)/\(id.namespace)/\(id.name)" }

    /// Zero-padded so that keys sort by number.
    public static func history(_ revision: UInt64) -> String {
        let digits = String(revision)
        return history + String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()

    static func encode<T: Encodable>(_ v: T) -> [UInt8] { (try? [UInt8](encoder.encode(v))) ?? [] }

    /// A record of weft's from etcd; a value it cannot read is an error naming the key.
    static func decode<T: Decodable>(_ type: T.Type, _ kv: EtcdKeyValue) throws -> T {
        do { return try decoder.decode(type, from: Data(kv.value)) } catch {
            throw ClusterError("etcd key \(kv.key) does not hold a weft \(T.self) record (written by another tool or version?)")
        }
    }
}

/// One config revision of the cluster.
public struct ClusterRevision: Codable, Sendable, Equatable {
    public var revision: UInt64
    public var time: Date
    /// `apply`, `delete`, `rollback to N`.
    public var reason: String
    public var contentHash: String
    public var resources: Int
    /// Who wrote it (user@host of the weft command).
    public var author: String
}

/// What a node registers about itself while it lives.
public struct ClusterNode: Codable, Sendable, Equatable {
    public var node: String
    /// The node's addresses (loopback and link-local left out).
    public var addresses: [String]
    /// The tunnel port other nodes' agents dial (--tunnel-port).
    public var tunnelPort: UInt16
    /// The PEM roots this node's workload certificates chain to: public certificates only.
    public var caCertificates: [String]
    public var agentStarted: Date
}

/// What a node reports of the cluster's config.
public struct ClusterNodeStatus: Codable, Sendable, Equatable {
    public var node: String
    /// The newest cluster revision this node has seen.
    public var observedRevision: UInt64
    /// The cluster revision it serves (0: none yet).
    public var appliedRevision: UInt64
    public var appliedTime: Date?
    /// Why observedRevision is not applied: one line, and the diagnostics.
    public var error: String?
    public var diagnostics: [String]
    /// The node's own revision number (config dir and cluster together).
    public var localRevision: UInt64
    public var updated: Date
}

/// A cluster operation that cannot be done, in one line.
public struct ClusterError: Error, CustomStringConvertible {
    public var description: String
    public var diagnostics: [Diagnostic]
    public init(_ d: String, diagnostics: [Diagnostic] = []) {
        description = d
        self.diagnostics = diagnostics
    }
}

/// The cluster's config as etcd holds it at one store revision.
public struct ClusterConfigState: Sendable {
    public var revision: ClusterRevision?
    /// The revision key's mod revision (0: no config yet): what a writer compares.
    public var revisionModRevision: Int64
    /// Resource keys and their YAML.
    public var resources: [String: String]
    public var storeRevision: Int64

    /// Reads everything under the config prefix in one consistent read.
    public static func read(_ client: EtcdClient, at storeRevision: Int64 = 0) async throws -> ClusterConfigState {
        let (kvs, rev) = try await client.get(ClusterKeys.config, prefix: true, revision: storeRevision)
        var state = ClusterConfigState(revision: nil, revisionModRevision: 0, resources: [:], storeRevision: rev)
        for kv in kvs {
            if kv.key == ClusterKeys.revision {
                state.revision = try ClusterKeys.decode(ClusterRevision.self, kv)
                state.revisionModRevision = kv.modRevision
            } else {
                state.resources[kv.key] = kv.text
            }
        }
        return state
    }

    /// The resources as documents of origin `etcd`, parsed as the agents will parse them.
    public func parsed() -> ConfigLoader.Parsed {
        ConfigLoader.parse(resources.keys.sorted().map { (resources[$0]!, "etcd \($0)", ClusterKeys.origin) })
    }
}

extension ClusterKeys {
    /// The origin of resources that came from etcd (`weft get` shows it).
    public static let origin = "etcd"
}
