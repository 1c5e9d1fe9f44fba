import Foundation
import NIOConcurrencyHelpers
import NIOCore
import WeftConfig

/// What one cluster shares across event loops: the circuit-breaker counters of its
/// DestinationRule connectionPool (Envoy's per-cluster thresholds) and its outlier
/// detector. Everything is behind one lock; each operation is a few integer updates.
final class ClusterState: Sendable {
    /// Envoy's defaults where connectionPool is silent (effectively unlimited).
    static let unlimited = Int(UInt32.max)

    struct Limits: Equatable {
        var maxConnections = unlimited
        var maxPending = unlimited
        var maxRequests = unlimited
        var maxRetries = unlimited

        init(_ p: ConnectionPool?) {
            if let v = p?.maxConnections, v > 0 { maxConnections = v }
            if let v = p?.http1MaxPendingRequests, v > 0 { maxPending = v }
            if let v = p?.http2MaxRequests, v > 0 { maxRequests = v }
            if let v = p?.maxRetries, v > 0 { maxRetries = v }
        }
    }

    private struct State {
        var connections = 0
        var requests = 0
        var retries = 0
        var waiters: [(loop: EventLoop, id: UInt64, wake: @Sendable () -> Void)] = []
        var nextWaiter: UInt64 = 0
        /// Idle connections, with a way to close each from any thread.
        var idle: [(loop: EventLoop, id: UInt64, reclaim: @Sendable () -> Void)] = []
        var outlier: OutlierDetector?
        var lastTick = Date.distantPast
        /// Requests in flight per endpoint (LEAST_REQUEST).
        var active: [SocketKey: Int] = [:]
    }

    let limits: Limits
    /// Envoy's name of the cluster (telemetry, access log), formatted once.
    let name: String
    let outlierPolicy: OutlierDetection?
    let endpoints: [SocketKey]
    private let state: NIOLockedValueBox<State>

    init(_ c: Cluster) {
        limits = Limits(c.connectionPool)
        name = c.key.description
        outlierPolicy = c.outlierDetection
        endpoints = c.endpoints.map(\.socket)
        var s = State()
        if let p = c.outlierDetection { s.outlier = OutlierDetector(p, endpoints: endpoints.map(\.description)) }
        state = NIOLockedValueBox(s)
    }

    /// Whether a config change leaves this state valid for `c` (same limits, policy and
    /// endpoints): counters and ejections then carry over to the new revision.
    func fits(_ c: Cluster) -> Bool {
        limits == Limits(c.connectionPool) && outlierPolicy == c.outlierDetection && endpoints == c.endpoints.map(\.socket)
    }

    // MARK: connections and requests (circuit breakers)

    /// Reserves a new upstream connection if maxConnections allows.
    func openConnection() -> Bool {
        state.withLockedValue { s in
            guard s.connections < limits.maxConnections else { return false }
            s.connections += 1
            return true
        }
    }

    /// A connection closed: its slot goes to the longest waiting request.
    func connectionClosed() {
        let wake = state.withLockedValue { s -> (@Sendable () -> Void)? in
            s.connections -= 1
            return s.waiters.isEmpty ? nil : s.waiters.removeFirst().wake
        }
        wake?()
    }

    /// What to do with a connection that just went idle on its loop.
    enum Release {
        /// Keep it idle (nobody waits).
        case keep
        /// Keep it idle and wake this waiter on the same loop to take it.
        case keepAndWake(@Sendable () -> Void)
        /// Close it: requests wait on other loops, and its slot is theirs once it closes
        /// (connections cannot move between loops).
        case close
    }

    func connectionIdle(on loop: EventLoop) -> Release {
        state.withLockedValue { s in
            if let i = s.waiters.firstIndex(where: { $0.loop === loop }) { return .keepAndWake(s.waiters.remove(at: i).wake) }
            return s.waiters.isEmpty ? .keep : .close
        }
    }

    /// Queues a request for a connection; nil if http1MaxPendingRequests is full (the
    /// caller answers 503 UO). The id cancels the wait. If a connection sits idle on
    /// another loop (where this request cannot use it), it is closed to free its slot.
    func wait(on loop: EventLoop, wake: @escaping @Sendable () -> Void) -> UInt64? {
        let (id, reclaim) = state.withLockedValue { s -> (UInt64?, (@Sendable () -> Void)?) in
            guard s.waiters.count < limits.maxPending else { return (nil, nil) }
            s.nextWaiter += 1
            s.waiters.append((loop, s.nextWaiter, wake))
            let other = s.idle.firstIndex { $0.loop !== loop }
            return (s.nextWaiter, other.map { s.idle.remove(at: $0).reclaim })
        }
        reclaim?()
        return id
    }

    /// Registers an idle connection; `reclaim` closes it (on its own loop).
    func addIdle(on loop: EventLoop, reclaim: @escaping @Sendable () -> Void) -> UInt64 {
        state.withLockedValue { s in
            s.nextWaiter += 1
            s.idle.append((loop, s.nextWaiter, reclaim))
            return s.nextWaiter
        }
    }

    /// The idle connection `id` is in use again, or closed.
    func removeIdle(_ id: UInt64) {
        state.withLockedValue { s in s.idle.removeAll { $0.id == id } }
    }

    /// Stops waiting (the request ended some other way).
    func cancelWait(_ id: UInt64) {
        state.withLockedValue { s in s.waiters.removeAll { $0.id == id } }
    }

    /// Starts a request if http2MaxRequests allows.
    func startRequest() -> Bool {
        state.withLockedValue { s in
            guard s.requests < limits.maxRequests else { return false }
            s.requests += 1
            return true
        }
    }

    func endRequest() {
        state.withLockedValue { $0.requests -= 1 }
    }

    /// Starts a retry if maxRetries (concurrent retries to the cluster) allows.
    func startRetry() -> Bool {
        state.withLockedValue { s in
            guard s.retries < limits.maxRetries else { return false }
            s.retries += 1
            return true
        }
    }

    func endRetry() {
        state.withLockedValue { $0.retries -= 1 }
    }

    // MARK: requests in flight per endpoint

    func active(_ e: SocketKey) -> Int { state.withLockedValue { $0.active[e] ?? 0 } }
    func attemptStarted(_ e: SocketKey) { state.withLockedValue { $0.active[e, default: 0] += 1 } }
    func attemptEnded(_ e: SocketKey) {
        state.withLockedValue { s in
            s.active[e, default: 1] -= 1
            if s.active[e]! <= 0 { s.active[e] = nil }
        }
    }

    // MARK: outlier detection

    /// Counts an attempt's result against its endpoint; true if that ejected it.
    @discardableResult
    func record(_ endpoint: SocketKey, _ result: OutlierDetector.Result) -> Bool {
        state.withLockedValue { s in s.outlier?.record(endpoint.description, result, now: Date()) ?? false }
    }

    /// Endpoints currently ejected.
    func ejected() -> Set<SocketKey> {
        state.withLockedValue { s in
            guard var o = s.outlier else { return [] }
            let now = Date()
            if now.timeIntervalSince(s.lastTick) >= 1 {
                o.tick(now: now)
                s.outlier = o
                s.lastTick = now
            }
            return Set(endpoints.filter { !o.isAvailable($0.description, now: now) })
        }
    }
}

/// Every cluster's shared state, kept across revisions while a cluster stays the same.
final class ClusterRegistry: Sendable {
    private let states = NIOLockedValueBox<[ClusterKey: ClusterState]>([:])

    /// Re-keys to a new revision's clusters, keeping the state of unchanged ones.
    func update(_ tables: ProxyTables) {
        states.withLockedValue { s in
            var next: [ClusterKey: ClusterState] = [:]
            for (k, c) in tables.clusters {
                if let old = s[k], old.fits(c) { next[k] = old } else { next[k] = ClusterState(c) }
            }
            s = next
        }
    }

    /// The state of a cluster (created on demand for one a revision just dropped).
    func state(_ c: Cluster) -> ClusterState {
        states.withLockedValue { s in
            if let st = s[c.key] { return st }
            let st = ClusterState(c)
            s[c.key] = st
            return st
        }
    }
}
