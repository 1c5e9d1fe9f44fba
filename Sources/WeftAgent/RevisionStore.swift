import Foundation
import Glibc
import WeftConfig

/// One committed revision as persisted: every document of the snapshot with its origin.
struct RevisionRecord: Codable, Sendable {
    struct StoredDocument: Codable, Sendable {
        var origin: String
        var yaml: String
    }

    var revision: UInt64
    var time: Date
    /// What made it: `files`, `apply`, `delete`, `rollback to N`, `startup`.
    var reason: String
    var contentHash: String
    var documents: [StoredDocument]
    /// The cluster revision (etcd) whose resources it holds, in cluster mode.
    var clusterRevision: UInt64? = nil
}

/// A line of `weft history`.
public struct RevisionSummary: Codable, Sendable {
    public var revision: UInt64
    public var time: Date
    public var reason: String
    public var resources: Int
    public var contentHash: String
    public var current: Bool
}

/// Applied config on disk (`--state-dir`, default /var/lib/weft): `revisions/<N>.json` and
/// `current` naming the revision in force. Each file is written to a temporary name,
/// fsynced, renamed, and the directory fsynced, and `current` moves only after the
/// revision file is durable: a crash at any instant leaves the old or the new revision in
/// force, never a mix. The last `keep` revisions are kept for rollback.
final class RevisionStore: @unchecked Sendable {
    let dir: String
    let keep: Int
    var revisionsDir: String { dir + "/revisions" }
    var currentPath: String { dir + "/current" }

    init(dir: String, keep: Int) throws {
        self.dir = dir
        self.keep = keep
        do {
            try FileManager.default.createDirectory(atPath: revisionsDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw AgentError("cannot create state dir \(dir) (--state-dir): \(error.localizedDescription)")
        }
    }

    func path(_ revision: UInt64) -> String { "\(revisionsDir)/\(revision).json" }

    /// The revision `current` names; nil on a fresh node. A damaged state is an error.
    func current() throws -> RevisionRecord? {
        guard let data = FileManager.default.contents(atPath: currentPath) else { return nil }
        guard let text = String(data: data, encoding: .utf8), let n = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw AgentError("\(currentPath) does not name a revision; fix or remove it (the agent then starts from the config dir)")
        }
        return try load(n)
    }

    func load(_ revision: UInt64) throws -> RevisionRecord {
        guard let data = FileManager.default.contents(atPath: path(revision)) else {
            throw AgentError("revision \(revision) is not kept in \(revisionsDir) (see `weft history`)")
        }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        do { return try dec.decode(RevisionRecord.self, from: data) } catch {
            throw AgentError("\(path(revision)) is damaged: \(error)")
        }
    }

    /// Highest revision number on disk (complete files only).
    func latestNumber() -> UInt64 {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: revisionsDir)) ?? []
        return names.compactMap { $0.hasSuffix(".json") ? UInt64($0.dropLast(5)) : nil }.max() ?? 0
    }

    /// Makes `record` the revision in force, durably; then drops revisions beyond `keep`.
    func commit(_ record: RevisionRecord) throws {
        let enc = JSONEncoder()
        enc.dateEncodingStrategy = .iso8601
        enc.outputFormatting = [.sortedKeys]
        try Self.writeDurably(try enc.encode(record), to: path(record.revision))
        try Self.writeDurably(Data("\(record.revision)\n".utf8), to: currentPath)
        let numbers = ((try? FileManager.default.contentsOfDirectory(atPath: revisionsDir)) ?? [])
            .compactMap { $0.hasSuffix(".json") ? UInt64($0.dropLast(5)) : nil }.sorted()
        for n in numbers.dropLast(keep) where n != record.revision { unlink(path(n)) }
        // Temporary files of a write that crashed.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: revisionsDir)) ?? [] where name.contains(".tmp") {
            unlink("\(revisionsDir)/\(name)")
        }
    }

    func list() -> [RevisionSummary] {
        let cur = (try? String(contentsOfFile: currentPath, encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let numbers = ((try? FileManager.default.contentsOfDirectory(atPath: revisionsDir)) ?? [])
            .compactMap { $0.hasSuffix(".json") ? UInt64($0.dropLast(5)) : nil }.sorted()
        return numbers.compactMap { n in
            guard let r = try? load(n) else { return nil }
            return RevisionSummary(revision: n, time: r.time, reason: r.reason, resources: r.documents.count, contentHash: r.contentHash, current: n == cur)
        }
    }

    /// temp file → fsync → rename → fsync(dir).
    static func writeDurably(_ data: Data, to path: String) throws {
        let tmp = "\(path).tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if fd < 0 { throw AgentError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
        var ok = data.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmp)
            throw AgentError("cannot write \(path): \(e)")
        }
        let dirfd = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 {
            fsync(dirfd)
            close(dirfd)
        }
    }
}
