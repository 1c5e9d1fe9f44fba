import Foundation
import Testing
@testable import WeftAgent
import WeftConfig
import WeftDNS
import WeftDataplane

/// Destinations DNS answers open under REGISTRY_ONLY: how long they stay, how many.
@Suite struct LearnedEgressTests {
    let t0 = Date(timeIntervalSince1970: 1_000_000)

    func answer(_ addresses: [String], ttl: UInt32 = 30, ports: [UInt16] = [443]) -> LearnedAddresses {
        LearnedAddresses(name: "api.partners.example.com", ports: ports, addresses: addresses.map { IPAddress($0)! }, ttl: ttl)
    }

    @Test func answersOpenEachAddressOnEachPortForAtLeastAnHour() {
        let l = LearnedEgress()
        let rules = l.learn(answer(["198.51.100.1", "2001:db8::1"], ports: [443, 8443]), now: t0)
        #expect(Set(rules.map(\.description)) == ["198.51.100.1:443", "198.51.100.1:8443", "[2001:db8::1]:443", "[2001:db8::1]:8443"])
        // The same answer again (from the cache, say) has nothing to write.
        #expect(l.learn(answer(["198.51.100.1"], ports: [443]), now: t0.addingTimeInterval(1)).isEmpty)
        #expect(l.active(now: t0.addingTimeInterval(3599)).count == 4)   // TTL 30 s, kept an hour
        #expect(l.active(now: t0.addingTimeInterval(3601)).isEmpty)
        // A long TTL is kept as long; a later answer extends, never shortens.
        _ = l.learn(answer(["198.51.100.2"], ttl: 7200), now: t0)
        _ = l.learn(answer(["198.51.100.2"], ttl: 10), now: t0.addingTimeInterval(100))
        #expect(l.active(now: t0.addingTimeInterval(7100)).map(\.description) == ["198.51.100.2:443"])
    }

    @Test func whatTheKernelRecordsIsKeptUntilItsExpiry() {
        let l = LearnedEgress()
        let kept = EgressRule(address: IPAddress("198.51.100.7")!, port: 443)
        let stale = EgressRule(address: IPAddress("198.51.100.8")!, port: 443)
        #expect(l.merge([kept: t0.addingTimeInterval(600), stale: t0.addingTimeInterval(-1)], now: t0) == 1)
        #expect(l.merge([kept: t0.addingTimeInterval(600)], now: t0) == 0)   // known already
        #expect(l.active(now: t0.addingTimeInterval(599)) == [kept] && l.active(now: t0.addingTimeInterval(601)).isEmpty)
    }

    @Test func fullTableDropsWhatExpiresFirst() {
        let l = LearnedEgress(capacity: 3)
        for i in 1...3 { _ = l.learn(answer(["198.51.100.\(i)"]), now: t0.addingTimeInterval(Double(i))) }
        _ = l.learn(answer(["198.51.100.9"]), now: t0.addingTimeInterval(10))
        #expect(Set(l.active(now: t0.addingTimeInterval(11)).map(\.address.description)) == ["198.51.100.2", "198.51.100.3", "198.51.100.9"])
    }
}
