import Foundation
import WeftConfig

/// Passive health checking of one service's endpoints, as Envoy's outlier detection does
/// it for consecutive errors: an endpoint with too many errors in a row is ejected for
/// baseEjectionTime × (times it has been ejected), never more than maxEjectionPercent of
/// the endpoints at once — though, as in Envoy, at least one can always be ejected.
public struct OutlierDetector: Sendable {
    /// How an attempt on an endpoint went, for counting.
    public enum Result: Sendable { case success, status(Int), localFailure }

    struct Host {
        var consecutive5xx = 0
        var consecutiveGateway = 0
        var ejectedUntil: Date?
        var timesEjected = 0
        var lastEjection: Date?
    }

    let consecutive5xx: Int
    let consecutiveGateway: Int
    let baseEjection: TimeInterval
    let interval: TimeInterval
    let maxEjectionPercent: Int
    private var hosts: [String: Host]

    /// Istio's defaults where the policy is silent: 5 consecutive 5xx, gateway errors off,
    /// 10 s interval, 30 s base ejection, at most 10% ejected.
    public init(_ policy: OutlierDetection, endpoints: [String]) {
        consecutive5xx = policy.consecutive5xxErrors ?? 5
        consecutiveGateway = policy.consecutiveGatewayErrors ?? 0
        baseEjection = Double(policy.baseEjectionTime?.nanoseconds ?? 30_000_000_000) / 1e9
        interval = Double(policy.interval?.nanoseconds ?? 10_000_000_000) / 1e9
        maxEjectionPercent = policy.maxEjectionPercent ?? 10
        hosts = Dictionary(uniqueKeysWithValues: endpoints.map { ($0, Host()) })
    }

    /// Records a result; returns true if it ejected the endpoint.
    @discardableResult
    public mutating func record(_ endpoint: String, _ result: Result, now: Date) -> Bool {
        guard var h = hosts[endpoint] else { return false }
        switch result {
        case .success:
            h.consecutive5xx = 0
            h.consecutiveGateway = 0
        case .status(let s) where (500...599).contains(s):
            h.consecutive5xx += 1
            if [502, 503, 504].contains(s) { h.consecutiveGateway += 1 } else { h.consecutiveGateway = 0 }
        case .status:
            h.consecutive5xx = 0
            h.consecutiveGateway = 0
        case .localFailure:
            // Connect failures and resets count as both (split_external_local_origin_errors off).
            h.consecutive5xx += 1
            h.consecutiveGateway += 1
        }
        hosts[endpoint] = h
        let tripped = (consecutive5xx > 0 && h.consecutive5xx >= consecutive5xx)
            || (consecutiveGateway > 0 && h.consecutiveGateway >= consecutiveGateway)
        guard tripped, h.ejectedUntil == nil || h.ejectedUntil! <= now, mayEject(now: now) else { return false }
        h.timesEjected += 1
        h.ejectedUntil = now.addingTimeInterval(baseEjection * Double(h.timesEjected))
        h.lastEjection = now
        h.consecutive5xx = 0
        h.consecutiveGateway = 0
        hosts[endpoint] = h
        return true
    }

    func mayEject(now: Date) -> Bool {
        let ejected = hosts.values.filter { ($0.ejectedUntil ?? .distantPast) > now }.count
        return ejected == 0 || (ejected + 1) * 100 <= maxEjectionPercent * hosts.count
    }

    /// Whether the endpoint gets traffic now.
    public func isAvailable(_ endpoint: String, now: Date) -> Bool {
        guard let until = hosts[endpoint]?.ejectedUntil else { return true }
        return until <= now
    }

    /// Endpoints not ejected at `now`, in the given order.
    public func available(_ endpoints: [String], now: Date) -> [String] {
        endpoints.filter { isAvailable($0, now: now) }
    }

    /// Every interval without a new ejection, an endpoint's multiplier decays by one, so a
    /// host that recovered is not punished for old ejections forever (Envoy's behaviour).
    public mutating func tick(now: Date) {
        for (k, var h) in hosts where h.timesEjected > 0 {
            if let until = h.ejectedUntil, until <= now { h.ejectedUntil = nil }
            if h.ejectedUntil == nil, let last = h.lastEjection,
               now.timeIntervalSince(last) >= interval * Double(h.timesEjected) + baseEjection * Double(h.timesEjected) {
                h.timesEjected -= 1
                h.lastEjection = now
            }
            hosts[k] = h
        }
    }

    /// How many times the endpoint has been ejected (decaying), for tests and stats.
    public func timesEjected(_ endpoint: String) -> Int { hosts[endpoint]?.timesEjected ?? 0 }
}
