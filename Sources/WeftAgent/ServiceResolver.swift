import Foundation
import Logging
import NIOCore
import WeftConfig
import WeftDNS

/// Resolves the names of `resolution: DNS` and `DNS_ROUND_ROBIN` ServiceEntries through
/// the agent's DNS forwarder (the node's resolvers, with the cache), and asks again when
/// an answer's TTL runs out (Envoy's respect_dns_ttl): no sooner than every 5 s, no later
/// than every hour. A failed lookup keeps the addresses last learned and is retried in 5 s
/// (a resolver that is away for a while must not empty a service), warned about once per
/// outage; "no such name" or no records empties them. Every change goes to `changed`, off
/// the DNS loop.
final class ServiceResolver: @unchecked Sendable {
    private let server: DNSServer
    private let logger: Logger
    private let changed: @Sendable () -> Void
    private let lock = NSLock()
    /// Name → families wanted, and a generation: a lookup of a name that was dropped (or
    /// wanted anew) meanwhile is not taken.
    private var wanted: [String: (families: Set<UInt8>, generation: UInt64)] = [:]
    private var generation: UInt64 = 0
    private var table = ResolvedNames()
    /// Names whose last lookup failed: the warning is said once per outage, not every 5 s.
    private var failing: Set<String> = []

    static let minRefresh: UInt32 = 5
    static let maxRefresh: UInt32 = 3600
    static let retry: Int64 = 5

    init(server: DNSServer, logger: Logger, changed: @escaping @Sendable () -> Void) {
        self.server = server
        self.logger = logger
        self.changed = changed
    }

    /// The answers in force.
    var current: ResolvedNames { lock.withLock { table } }

    /// The names a config needs: new ones are looked up now, dropped ones forgotten.
    func want(_ names: [String: Set<UInt8>]) {
        let (start, dropped) = lock.withLock { () -> ([String], Bool) in
            var start: [String] = []
            for (name, families) in names where wanted[name]?.families != families {
                generation += 1
                wanted[name] = (families, generation)
                start.append(name)
            }
            let gone = wanted.keys.filter { names[$0] == nil }
            for name in gone {
                wanted[name] = nil
                failing.remove(name)
            }
            let before = table.addresses.count
            table.addresses = table.addresses.filter { wanted[$0.key] != nil }
            return (start, table.addresses.count != before)
        }
        for name in start { resolve(name) }
        // Never from the caller's thread: it may hold the commit's locks.
        if dropped { DispatchQueue.global().async { self.changed() } }
    }

    private func resolve(_ name: String) {
        guard let (families, gen) = lock.withLock({ wanted[name] }) else { return }
        let types = families.sorted().map { $0 == 4 ? DNSType.a : DNSType.aaaa }
        let loop = server.eventLoop
        let lookups = types.map { type in
            server.lookup(name, type: type).recover { _ in DNSLookup(addresses: [], ttl: 0, failed: true) }
        }
        EventLoopFuture.whenAllComplete(lookups, on: loop).whenSuccess { [self] results in
            let answers = results.compactMap { try? $0.get() }
            let update = lock.withLock { () -> (changed: Bool, next: Int64, newlyFailed: Bool, recovered: Bool, addresses: [IPAddress])? in
                guard wanted[name]?.generation == gen else { return nil }
                let before = table.addresses[name]
                // Per family: a failed lookup keeps what that family had.
                var addresses: [IPAddress] = []
                for (type, answer) in zip(types, answers) {
                    let family: UInt8 = type == DNSType.a ? 4 : 6
                    addresses += answer.failed ? (before ?? []).filter { $0.family == family } : answer.addresses
                }
                let failed = answers.contains(where: \.failed)
                let ttl = answers.filter { !$0.failed }.map(\.ttl).min() ?? 0
                let next = failed ? Self.retry : Int64(min(max(ttl, Self.minRefresh), Self.maxRefresh))
                if before != addresses { table.addresses[name] = addresses }
                let newlyFailed = failed && failing.insert(name).inserted
                let recovered = !failed && failing.remove(name) != nil
                return (before != addresses, next, newlyFailed, recovered, addresses)
            }
            guard let update else { return }
            if update.newlyFailed {
                logger.warning("DNS service name \(name): no resolver answered; keeping \(update.addresses.map(\.description).joined(separator: ", ")), asking again in \(update.next) s",
                               metadata: ["component": "dns"])
            }
            if update.recovered && !update.changed {
                logger.info("DNS service name \(name) answered again", metadata: ["component": "dns"])
            }
            if update.changed {
                logger.info("DNS service name \(name) resolved to \(update.addresses.isEmpty ? "nothing" : update.addresses.map(\.description).joined(separator: ", ")); next lookup in \(update.next) s",
                            metadata: ["component": "dns"])
                DispatchQueue.global().async { self.changed() }
            }
            loop.scheduleTask(in: .seconds(update.next)) { [self] in
                guard lock.withLock({ wanted[name]?.generation == gen }) else { return }
                resolve(name)
            }
        }
    }
}
