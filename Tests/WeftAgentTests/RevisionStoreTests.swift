import Foundation
import Testing
@testable import WeftAgent

@Suite struct RevisionStoreTests {
    func tempDir() -> String {
        let d = NSTemporaryDirectory() + "weft-store-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    func record(_ n: UInt64) -> RevisionRecord {
        RevisionRecord(revision: n, time: Date(timeIntervalSince1970: Double(n)), reason: "apply", contentHash: "h\(n)",
                       documents: [.init(origin: "apply", yaml: "kind: X\nn: \(n)\n")])
    }

    @Test func keepsTheLastRevisionsAndTheCurrentOne() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RevisionStore(dir: dir, keep: 5)
        for n in 1...12 { try store.commit(record(UInt64(n))) }
        #expect(store.list().map(\.revision) == [8, 9, 10, 11, 12])
        #expect(store.list().filter(\.current).map(\.revision) == [12])
        #expect(try store.current()?.documents.first?.yaml == "kind: X\nn: 12\n")
        #expect(store.latestNumber() == 12)
        #expect(throws: AgentError.self) { try store.load(3) }
    }

    @Test func aTornWriteIsInvisibleAndCleanedUp() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RevisionStore(dir: dir, keep: 5)
        try store.commit(record(1))
        // Crash between writing revision 2 and moving `current`; and a half-written temp file.
        try JSONEncoder().encode(record(2)).write(to: URL(fileURLWithPath: store.path(2) + ".tmp-1"))
        try "2\n".write(toFile: store.currentPath + ".tmp-1", atomically: false, encoding: .utf8)
        #expect(try store.current()?.revision == 1)
        try store.commit(record(2))
        let names = try FileManager.default.contentsOfDirectory(atPath: store.revisionsDir)
        #expect(!names.contains { $0.contains(".tmp") })
        #expect(try store.current()?.revision == 2)
    }

    @Test func aDamagedCurrentPointerIsOneClearError() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RevisionStore(dir: dir, keep: 5)
        try "garbage".write(toFile: store.currentPath, atomically: true, encoding: .utf8)
        #expect { try store.current() } throws: { "\($0)".contains("does not name a revision") }
    }
}
