import Foundation
import Prometheus
import WeftConfig
import WeftDataplane

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

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Reads `maps` and brings every series up to date; `workloads` names this node's
    /// workloads by address.
    func collect(_ maps: DatapathMaps, workloads: [IPAddress: String]) {
        var now: [([String], name: String, help: String, labels: [(String, String)], value: UInt64)] = []
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
