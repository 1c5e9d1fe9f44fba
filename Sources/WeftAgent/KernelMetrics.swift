import Foundation
import Prometheus
import WeftConfig
import WeftDataplane
import WeftDNS

/// The kernel's counters in the agent's one registry, read from the pinned maps at each
/// scrape. They live in the kernel (per-CPU, summed here), so each series' counter is
/// moved on by what the kernel counted since the last scrape. A kernel count that went
/// down means the map was created anew (a datapath reset): the series starts again, as
/// Prometheus' rate() expects of a counter reset. A series the kernel no longer holds
/// (a workload removed) is dropped from the exposition.
final class KernelMetrics: @unchecked Sendable {
    private let registry: PrometheusCollectorRegistry
    private let lock = NSLock()
    private var series: [[String]: (counter: Counter, last: UInt64)] = [:]

    static let events = (name: "weft_datapath_events_total",
                         help: "What the kernel's socket hooks did (connect_xlate: connect() to a VIP sent to a backend; connect_capture: sent to the agent; connect_no_backend: refused; …), all cgroups of the agent together.")
    static let inbound = (name: "weft_inbound_plaintext_total",
                          help: "Plaintext TCP connection attempts to this node's workloads that the kernel dropped or steered to the agent, by reason.")

    static let dns = (name: "weft_dns_queries_total",
                      help: "Workloads' DNS queries the agent took, by result (mesh: answered from the mesh's hosts; forwarded: to the node's resolvers, cached among them: answered from the cache; failed: no resolver answered, SERVFAIL; overloaded: SERVFAIL at once, 256 questions already upstream; malformed: FORMERR or dropped; truncated: too big for UDP, TC sent; tcp_refused: a TCP connection closed as it came, 256 open).")
    static let dnsUpstream = (name: "weft_dns_upstream_queries_total", help: "Queries the agent's DNS server sent to the node's resolvers.")

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Reads `maps` and brings every series up to date; `workloads` names this node's
    /// workloads by address. The DNS server's counters (`dns`) go the same way.
    func collect(_ maps: DatapathMaps, workloads: [IPAddress: String], dns: DNSServer.Stats? = nil) {
        var now: [([String], name: String, help: String, labels: [(String, String)], value: UInt64)] = []
        if let dns {
            for (result, n) in [("mesh", dns.mesh), ("forwarded", dns.forwarded), ("cached", dns.cached), ("failed", dns.failed),
                                ("overloaded", dns.overloaded), ("malformed", dns.malformed), ("truncated", dns.truncated),
                                ("tcp_refused", dns.tcpRefused)] {
                now.append(([Self.dns.name, result], Self.dns.name, Self.dns.help, [("result", result)], UInt64(n)))
            }
            now.append(([Self.dnsUpstream.name], Self.dnsUpstream.name, Self.dnsUpstream.help, [], UInt64(dns.upstream)))
        }
        if let counters = try? maps.counters() {
            for c in counters {
                now.append(([Self.events.name, c.name], Self.events.name, Self.events.help, [("event", c.name)], c.value))
            }
        }
        if let counts = try? maps.inboundCounts() {
            for c in counts {
                let workload = workloads[c.address] ?? "unknown", address = "\(c.address)"
                now.append(([Self.inbound.name, workload, address, c.reason], Self.inbound.name, Self.inbound.help,
                            [("workload", workload), ("address", address), ("reason", c.reason)], c.count))
            }
        }
        lock.withLock {
            var kept: [[String]: (counter: Counter, last: UInt64)] = [:]
            for n in now {
                var entry = series.removeValue(forKey: n.0)
                    ?? (registry.makeCounter(name: n.name, labels: n.labels, help: n.help), 0)
                if n.value < entry.last {
                    registry.unregisterCounter(entry.counter)
                    entry = (registry.makeCounter(name: n.name, labels: n.labels, help: n.help), 0)
                }
                entry.counter.increment(by: Int64(n.value - entry.last))
                entry.last = n.value
                kept[n.0] = entry
            }
            for gone in series.values { registry.unregisterCounter(gone.counter) }
            series = kept
        }
    }
}
