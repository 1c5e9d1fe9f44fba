import WeftConfig

/// How one upstream attempt ended.
public enum AttemptOutcome: Sendable, Equatable {
    /// A response arrived (gRPC status from headers or trailers, if any).
    case response(status: Int, grpcStatus: Int?)
    /// No connection could be made: the request never reached the upstream.
    case connectFailure
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    case refusedStream
    /// The connection broke before a response; `requestSent` tells whether any of the
    /// request may have reached the upstream.
    case reset(requestSent: Bool)
    /// perTryTimeout fired before a response.
    case perTryTimeout
}

/// Decides, attempt by attempt, whether to deliver, retry, or give up — Istio's retry
/// semantics, retrying only when it is safe: the request never reached the upstream, or
/// its method is idempotent and its body was buffered whole (≤ 64 KiB) so it can be resent.
/// gRPC calls are all POSTs; a retry on a gRPC status the route names (unavailable,
/// cancelled, …) is the operator declaring that status safe to retry, as gRPC's own retry
/// policy does, so it needs only the buffered body.
public struct RetryStateMachine: Sendable {
    public enum Action: Sendable, Equatable {
        /// Send this response to the client (flags as Envoy logs them, e.g. URX).
        case deliver(flags: [String])
        /// Try again; `attempt` counts from 2.
        case retry(attempt: Int, backoffMillis: Int)
        /// No response to deliver: answer `status` with these response flags.
        case fail(status: Int, flags: [String])
    }

    /// Istio's default when a route sets no retries (pilot's default retry policy).
    public static let istioDefault = HTTPRetry(attempts: 2, perTryTimeout: nil,
                                               retryOn: ["connect-failure", "refused-stream", "unavailable", "cancelled", "503"])
    /// Envoy's base back-off interval; each retry waits a random time up to base × 2^n.
    static let baseBackoffMillis = 25
    static let idempotent: Set<String> = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]

    let policy: HTTPRetry
    let replayable: Bool
    let bodyBuffered: Bool
    /// Attempts made so far (the first one included).
    public private(set) var attempts = 1

    /// `bodyBuffered`: the whole request body is held (so it can be sent again).
    public init(policy: HTTPRetry?, method: String, bodyBuffered: Bool) {
        self.policy = policy ?? Self.istioDefault
        self.bodyBuffered = bodyBuffered
        replayable = Self.idempotent.contains(method.uppercased()) && bodyBuffered
    }

    /// The next step after an attempt ended; `jitter` in [0, 1) scales the back-off.
    public mutating func attemptFinished(_ outcome: AttemptOutcome, jitter: Double = 0.5) -> Action {
        let safe = !reachedUpstream(outcome) || replayable || (bodyBuffered && grpcConditionMet(outcome))
        let retriable = conditionMet(outcome) && safe
        if retriable && attempts <= policy.attempts {
            attempts += 1
            let cap = Self.baseBackoffMillis << min(attempts - 2, 10)
            return .retry(attempt: attempts, backoffMillis: Int(Double(cap) * max(0, min(jitter, 0.999))))
        }
        let exhausted = retriable ? ["URX"] : []
        switch outcome {
        case .response: return .deliver(flags: exhausted)
        case .connectFailure, .refusedStream, .reset: return .fail(status: 503, flags: ["UF"] + exhausted)
        case .perTryTimeout: return .fail(status: 504, flags: ["UT"] + exhausted)
        }
    }

    func reachedUpstream(_ o: AttemptOutcome) -> Bool {
        switch o {
        case .connectFailure, .refusedStream: return false
        case .reset(let sent): return sent
        case .response, .perTryTimeout: return true
        }
    }

    /// Whether any retryOn condition covers the outcome (Envoy's definitions).
    static let onConnectFailure: Set<String> = ["5xx", "gateway-error", "connect-failure", "reset"]
    static let onRefusedStream: Set<String> = ["5xx", "refused-stream", "reset"]
    static let onReset: Set<String> = ["5xx", "reset"]
    static let onPerTryTimeout: Set<String> = ["5xx", "gateway-error", "reset"]

    /// Whether the policy's retryOn covers the outcome. Runs for every response, so it
    /// walks the (short) list as given instead of building sets from it.
    func conditionMet(_ o: AttemptOutcome) -> Bool {
        let on = policy.retryOn
        switch o {
        case .connectFailure:
            return on.contains(where: Self.onConnectFailure.contains)
        case .refusedStream:
            return on.contains(where: Self.onRefusedStream.contains)
        case .reset:
            return on.contains(where: Self.onReset.contains)
        case .perTryTimeout:
            return on.contains(where: Self.onPerTryTimeout.contains)
        case .response(let status, _):
            for condition in on {
                switch condition {
                case "5xx" where (500...599).contains(status): return true
                case "gateway-error" where status >= 502 && status <= 504: return true
                case "retriable-4xx" where status == 409: return true
                default: if Int(condition) == status { return true }
                }
            }
            return grpcConditionMet(o)
        }
    }

    static let grpcNames: [Int: String] = [1: "cancelled", 4: "deadline-exceeded", 8: "resource-exhausted", 14: "unavailable"]

    /// Whether a gRPC status retryOn condition covers the outcome.
    func grpcConditionMet(_ o: AttemptOutcome) -> Bool {
        guard case .response(_, let grpc?) = o, let name = Self.grpcNames[grpc] else { return false }
        return policy.retryOn.contains(name)
    }
}
