import Foundation
import Testing
@testable import WeftStore

/// A real etcd (Debian's etcd-server) on loopback ports chosen here, in a temporary data
/// dir, for one test; gone when the test ends.
final class EtcdProcess {
    let process = Process()
    let dir: String
    let clientPort: Int
    var url: String { "http://127.0.0.1:\(clientPort)" }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
                _ = bind(fd, p, len)
                return getsockname(fd, p, &len)
            }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    init() throws {
        dir = NSTemporaryDirectory() + "weft-etcd-\(UUID().uuidString)"
        clientPort = Self.freePort()
        let peer = "http://127.0.0.1:\(Self.freePort())"
        guard let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw EtcdConfigError("etcd is not installed (Debian's etcd-server; scripts/test installs it)")
        }
        process.executableURL = URL(fileURLWithPath: etcd)
        process.arguments = ["--name", "t", "--data-dir", dir, "--listen-client-urls", url, "--advertise-client-urls", url,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t=\(peer)",
                             "--log-level", "error", "--logger", "zap"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Waits until etcd answers (a fresh member elects itself in about a second).
    func ready(_ client: EtcdClient) async throws {
        for _ in 0..<100 {
            if (try? await client.get("ready")) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw EtcdError.unavailable("test etcd did not start")
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// Runs `body` against a fresh etcd with a connected client.
func withEtcd(_ body: @Sendable (EtcdClient, EtcdProcess) async throws -> Void) async throws {
    let etcd = try EtcdProcess()
    try await EtcdClient.with(try EtcdEndpoints(etcd.url), callTimeout: .seconds(2)) { client in
        try await etcd.ready(client)
        try await body(client, etcd)
    }
    _ = etcd
}

extension EtcdProcess: @unchecked Sendable {}

/// Collects what a watch delivers, for assertions.
actor Seen {
    var batches: [([EtcdEvent], Int64)] = []
    func add(_ e: [EtcdEvent], _ r: Int64) { batches.append((e, r)) }
    var events: [EtcdEvent] { batches.flatMap(\.0) }
}

@Suite(.serialized) struct EtcdClientTests {
    @Test func writesReadsAndDeletesKeysAndPrefixes() async throws {
        try await withEtcd { c, _ in
            let r1 = try await c.put("weft/a/1", Array("one".utf8))
            let r2 = try await c.put("weft/a/2", Array("two".utf8))
            try await c.put("weft/b", Array("other".utf8))
            #expect(r2 > r1)
            let (kvs, rev) = try await c.get("weft/a/", prefix: true)
            #expect(kvs.map(\.key) == ["weft/a/1", "weft/a/2"])
            #expect(kvs.map(\.text) == ["one", "two"])
            #expect(rev >= r2)
            // As of an earlier revision, the second key did not exist yet.
            #expect(try await c.get("weft/a/", prefix: true, revision: r1).kvs.map(\.key) == ["weft/a/1"])
            #expect(try await c.delete("weft/a/", prefix: true) == 2)
            #expect(try await c.get("weft/", prefix: true).kvs.map(\.key) == ["weft/b"])
        }
    }

    @Test func aTransactionWritesAllOrNothingAndOnlyOneOfTwoRacingWritersWins() async throws {
        try await withEtcd { c, _ in
            let base = try await c.put("weft/rev", Array("1".utf8))
            // Both read revision `base`, both try to move it on.
            let first = try await c.txn(if: [.modRevision("weft/rev", equals: base)],
                                        then: [.put("weft/rev", Array("2".utf8)), .put("weft/res/x", Array("from first".utf8))])
            let second = try await c.txn(if: [.modRevision("weft/rev", equals: base)],
                                         then: [.put("weft/rev", Array("2".utf8)), .put("weft/res/y", Array("from second".utf8))])
            #expect(first.succeeded)
            #expect(!second.succeeded)
            let keys = try await c.get("weft/", prefix: true).kvs.map(\.key)
            #expect(keys == ["weft/res/x", "weft/rev"])
            // A key that does not exist has mod revision 0.
            #expect(try await c.txn(if: [.modRevision("weft/none", equals: 0)], then: [.put("weft/none", [1])]).succeeded)
            #expect(try await !c.txn(if: [.value("weft/rev", equals: Array("1".utf8))], then: [.delete("weft/rev")]).succeeded)
        }
    }

    @Test func aWatchDeliversATransactionTogetherAndResumesFromARevision() async throws {
        try await withEtcd { c, _ in
            let start = try await c.put("weft/w/0", [0])
            let seen = Seen()
            let watch = Task {
                try await c.watch(prefix: "weft/w/", from: start + 1) { events, rev in await seen.add(events, rev) }
            }
            let rev = try await c.txn(if: [], then: [.put("weft/w/1", [1]), .put("weft/w/2", [2]), .delete("weft/w/0")]).revision
            try await c.put("weft/elsewhere", [9])
            for _ in 0..<50 where await seen.events.count < 3 { try await Task.sleep(for: .milliseconds(50)) }
            watch.cancel()
            _ = await watch.result
            let batches = await seen.batches
            #expect(batches.count == 1)
            #expect(batches.first?.1 == rev)
            #expect(batches.first?.0.map(\.kv.key) == ["weft/w/1", "weft/w/2", "weft/w/0"])
            #expect(batches.first?.0.map(\.kind) == [.put, .put, .delete])

            // From an old revision, the history is replayed.
            let replay = Seen()
            let again = Task { try await c.watch(prefix: "weft/w/", from: start) { e, r in await replay.add(e, r) } }
            for _ in 0..<50 where await replay.events.count < 4 { try await Task.sleep(for: .milliseconds(50)) }
            again.cancel()
            _ = await again.result
            #expect(await replay.events.map(\.kv.key) == ["weft/w/0", "weft/w/1", "weft/w/2", "weft/w/0"])
        }
    }

    @Test func aWatchFromCompactedHistoryFailsAsCompacted() async throws {
        try await withEtcd { c, _ in
            let old = try await c.put("weft/k", [1])
            let now = try await c.put("weft/k", [2])
            try await c.compact(now)
            await #expect(throws: EtcdError.compacted(compactRevision: now)) {
                try await c.watch(prefix: "weft/", from: old) { _, _ in }
            }
        }
    }

    @Test func keysOnALeaseLiveWhileItIsKeptAliveAndGoWhenItIsRevoked() async throws {
        try await withEtcd { c, _ in
            let lease = try await c.grantLease(ttl: 2)
            try await c.put("weft/nodes/n1", Array("up".utf8), lease: lease)
            let keeper = Task { try await c.keepAlive(lease, every: .milliseconds(500)) }
            try await Task.sleep(for: .seconds(3))
            #expect(try await c.get("weft/nodes/n1").kvs.first?.lease == lease)
            try await c.revokeLease(lease)
            #expect(try await c.get("weft/nodes/n1").kvs.isEmpty)
            // The keeper learns the lease is gone at its next renewal.
            let outcome = await keeper.result
            #expect(throws: EtcdError.leaseLost(lease)) { try outcome.get() }
        }
    }

    @Test func aLeaseNotKeptAliveExpiresWithItsKeys() async throws {
        try await withEtcd { c, _ in
            let lease = try await c.grantLease(ttl: 1)
            try await c.put("weft/status/n1", [1], lease: lease)
            try await Task.sleep(for: .seconds(3))
            #expect(try await c.get("weft/status/n1").kvs.isEmpty)
        }
    }

    @Test func aClusterThatIsNotThereIsUnavailableWithinTheCallTimeout() async throws {
        let port = EtcdProcess.freePort()
        let started = ContinuousClock.now
        await #expect {
            try await EtcdClient.with(try EtcdEndpoints("http://127.0.0.1:\(port)"), callTimeout: .seconds(1)) { c in
                _ = try await c.get("weft/x")
            }
        } throws: { error in
            guard case EtcdError.unavailable(let m) = error else { return false }
            return m.contains("127.0.0.1:\(port)")
        }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func endpointsAreParsedOrRefusedWithTheReason() throws {
        let e = try EtcdEndpoints("http://10.0.0.1:2379, http://10.0.0.2:22379,http://[fd00::1]:2379")
        #expect(e.hosts.map(\.host) == ["10.0.0.1", "10.0.0.2", "fd00::1"])
        #expect(e.hosts.map(\.port) == [2379, 22379, 2379])
        #expect(e.tls == nil)
        #expect(try EtcdEndpoints("https://etcd.example:2379", tls: .init(ca: "/ca.pem", cert: nil, key: nil)).tls?.ca == "/ca.pem")
        #expect(try EtcdEndpoints("http://etcd").hosts.first?.port == 2379)
        for bad in ["", "10.0.0.1:2379", "ftp://x:1", "http://x:0", "http://x:2379/v3", "http://a:1,https://b:1", "http://user@x:1"] {
            #expect(throws: EtcdConfigError.self, "\(bad)") { try EtcdEndpoints(bad) }
        }
        #expect(throws: EtcdConfigError.self) { try EtcdEndpoints("http://x:1", tls: .init(ca: "/ca.pem", cert: nil, key: nil)) }
        #expect(throws: EtcdConfigError.self) { try EtcdEndpoints("https://x:1", tls: .init(ca: nil, cert: "/c.pem", key: nil)) }
    }
}
