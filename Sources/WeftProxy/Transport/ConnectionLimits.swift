import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import WeftConfig

/// Bounds how many client connections the agent holds: in all (every listener), and
/// from one remote address on the listeners the network reaches (the tunnel and the
/// plaintext inbound listener: one host must not be able to take the node's agent
/// down). A connection over a bound is closed as it is accepted, counted, and logged —
/// at most one line per reason every 10 s, so a flood cannot fill the disk either.
final class ConnectionLimits: Sendable {
    /// Most connections at once, all listeners together.
    let total: Int
    /// Most connections at once from one address, on network-facing listeners.
    let perSource: Int

    private struct State {
        var open = 0
        var bySource: [IPAddress: Int] = [:]
    }

    private let state = NIOLockedValueBox(State())
    private let log: LogThrottle
    /// `weft_connections`, set from the count at each scrape.
    private let open: Gauge
    private let refused: [String: Counter]

    init(total: Int, perSource: Int, logger: Logger, registry: PrometheusCollectorRegistry) {
        self.total = total
        self.perSource = perSource
        log = LogThrottle(logger: logger)
        open = registry.makeGauge(name: "weft_connections", help: "Client connections the agent holds now (all listeners).")
        refused = Dictionary(uniqueKeysWithValues: ["global", "per_source"].map {
            ($0, registry.makeCounter(name: "weft_connections_refused_total", labels: [("reason", $0)],
                                      help: "Client connections closed on accept: over --max-connections (global) or --max-connections-per-source (per_source)."))
        })
    }

    /// Admits a connection just accepted from `source` (counted per source when
    /// `networkFacing`), or closes it; the count is given back when it closes.
    func admit(_ ch: Channel, source: IPAddress, networkFacing: Bool, listener: String) -> Bool {
        let refusal: String? = state.withLockedValue { s in
            if s.open >= total { return "global" }
            if networkFacing, s.bySource[source, default: 0] >= perSource { return "per_source" }
            s.open += 1
            if networkFacing { s.bySource[source, default: 0] += 1 }
            return nil
        }
        if let refusal {
            refused[refusal]?.increment()
            let limit = refusal == "global" ? "\(total) connections in all (--max-connections)"
                : "\(perSource) connections from one address (--max-connections-per-source)"
            log.warning("\(refusal)", "connection from \(source) to the \(listener) listener refused: the agent holds \(limit)")
            ch.close(promise: nil)
            return false
        }
        ch.closeFuture.whenComplete { [state] _ in
            state.withLockedValue { s in
                s.open -= 1
                guard networkFacing else { return }
                let n = s.bySource[source, default: 1] - 1
                s.bySource[source] = n > 0 ? n : nil
            }
        }
        return true
    }

    /// Client connections open now.
    var openNow: Int { state.withLockedValue { $0.open } }

    /// Brings `weft_connections` up to date (before a scrape).
    func collect() {
        open.set(Int64(openNow))
    }
}

/// Logs a line of each kind at most once per interval, saying how many of that kind
/// were left out since the last one: refusals are what an attacker can make a lot of.
final class LogThrottle: Sendable {
    private let logger: Logger
    private let interval: TimeInterval
    private let last = NIOLockedValueBox<[String: (at: Date, suppressed: Int)]>([:])

    init(logger: Logger, interval: TimeInterval = 10) {
        self.logger = logger
        self.interval = interval
    }

    /// Whether a line of `kind` may go out now, and how many were held back before it.
    func allow(_ kind: String, now: Date = Date()) -> (Bool, suppressed: Int) {
        last.withLockedValue { seen in
            if let l = seen[kind], now.timeIntervalSince(l.at) < interval {
                seen[kind] = (l.at, l.suppressed + 1)
                return (false, 0)
            }
            let suppressed = seen[kind]?.suppressed ?? 0
            seen[kind] = (now, 0)
            return (true, suppressed)
        }
    }

    func info(_ kind: String, _ message: @autoclosure () -> String, metadata: Logger.Metadata = [:]) {
        let (ok, suppressed) = allow(kind)
        if ok { logger.info("\(message())\(Self.suffix(suppressed))", metadata: metadata) }
    }

    func warning(_ kind: String, _ message: @autoclosure () -> String, metadata: Logger.Metadata = ["component": "proxy"]) {
        let (ok, suppressed) = allow(kind)
        if ok { logger.warning("\(message())\(Self.suffix(suppressed))", metadata: metadata) }
    }

    static func suffix(_ suppressed: Int) -> String {
        suppressed > 0 ? " (and \(suppressed) more like it in the last interval, not logged)" : ""
    }
}
