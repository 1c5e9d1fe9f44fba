import Foundation
import WeftConfig
import WeftDNS
import WeftDataplane

/// Destinations REGISTRY_ONLY opened because a workload looked up the name of a
/// `resolution: NONE` service through the agent (EgressNames). Written to the kernel by
/// the DNS server before the answer goes back, and kept in every plan of the reconciler
/// until they expire: at least an hour after the last answer that named them (Cilium's
/// toFQDNs minimum TTL; clients and their libraries keep answers longer than their TTL).
/// Node-wide, like the rest of the registry. The kernel keeps each one's expiry (the
/// map's value), so an agent that takes over or restarts keeps them as long. Bounded: past
/// `capacity` the entries that would expire first make room.
final class LearnedEgress: @unchecked Sendable {
    private let lock = NSLock()
    private var until: [EgressRule: Date] = [:]
    let capacity: Int
    static let minimumLifetime: TimeInterval = 3600

    init(capacity: Int = 16_384) {
        self.capacity = capacity
    }

    /// Records `learned` and returns the rules it adds, to be written to the kernel —
    /// after this call, so that a plan made meanwhile already counts them (Agent.apply
    /// reads the kernel before it asks for `active`). One already open only lasts longer:
    /// a name answered from the cache thousands of times a second costs no syscall.
    func learn(_ learned: LearnedAddresses, now: Date = Date()) -> [EgressRule] {
        let expiry = now.addingTimeInterval(max(TimeInterval(learned.ttl), Self.minimumLifetime))
        let rules = learned.addresses.flatMap { a in learned.ports.map { EgressRule(address: a, port: $0) } }
        return lock.withLock {
            var added: [EgressRule] = []
            for r in rules {
                if let old = until[r], old > now { until[r] = max(old, expiry) } else {
                    until[r] = expiry
                    added.append(r)
                }
            }
            if until.count > capacity {
                // A tenth at a time: a workload asking for name after name does not pay a
                // sort per answer.
                let keep = capacity - capacity / 10
                for (r, _) in until.sorted(by: { $0.value < $1.value }).prefix(until.count - keep) { until[r] = nil }
            }
            return added
        }
    }

    /// What is still open at `now`; the expired are forgotten.
    func active(now: Date = Date()) -> Set<EgressRule> {
        lock.withLock {
            until = until.filter { $0.value > now }
            return Set(until.keys)
        }
    }

    /// What the kernel says was opened and until when (a previous agent's answers, or
    /// this one's old agent still answering during a handover): kept as long as it says.
    /// Returns how many this table did not know.
    func merge(_ kernel: [EgressRule: Date], now: Date = Date()) -> Int {
        lock.withLock {
            var added = 0
            for (r, expiry) in kernel where expiry > now {
                if let mine = until[r], mine > now { until[r] = max(mine, expiry) } else {
                    until[r] = expiry
                    added += 1
                }
            }
            return added
        }
    }

    /// When `rule` stops being open, if it is.
    func expiry(of rule: EgressRule) -> Date? {
        lock.withLock { until[rule] }
    }

    /// Everything forgotten (the mode went back to ALLOW_ANY).
    func clear() {
        lock.withLock { until = [:] }
    }
}
