import Foundation
import Testing
import WeftConfig
@testable import WeftProxy

@Suite struct RetryStateMachineTests {
    let policy = HTTPRetry(attempts: 2, retryOn: ["5xx", "reset", "connect-failure"])

    @Test func aFailingFirstAttemptBecomesASuccess() {
        var m = RetryStateMachine(policy: policy, method: "GET", bodyBuffered: true)
        let r1 = m.attemptFinished(.response(status: 503, grpcStatus: nil), jitter: 0)
        #expect(r1 == .retry(attempt: 2, backoffMillis: 0))
        let r2 = m.attemptFinished(.response(status: 200, grpcStatus: nil))
        #expect(r2 == .deliver(flags: []))
    }

    @Test func attemptsAreRetriesOnTopOfTheFirstTryAndExhaustionIsFlagged() {
        var m = RetryStateMachine(policy: policy, method: "GET", bodyBuffered: true)
        let r3 = m.attemptFinished(.response(status: 500, grpcStatus: nil), jitter: 0.999)
        #expect(r3 == .retry(attempt: 2, backoffMillis: 24))
        let r4 = m.attemptFinished(.response(status: 500, grpcStatus: nil), jitter: 0.999)
        #expect(r4 == .retry(attempt: 3, backoffMillis: 49))
        // The third 500 is the last word: delivered as is, flagged URX.
        let r5 = m.attemptFinished(.response(status: 500, grpcStatus: nil))
        #expect(r5 == .deliver(flags: ["URX"]))
        #expect(m.attempts == 3)
    }

    @Test func aPostThatReachedTheBackendIsNotRetried() {
        var m = RetryStateMachine(policy: policy, method: "POST", bodyBuffered: true)
        let r6 = m.attemptFinished(.response(status: 503, grpcStatus: nil))
        #expect(r6 == .deliver(flags: []))
        var reset = RetryStateMachine(policy: policy, method: "POST", bodyBuffered: true)
        let r7 = reset.attemptFinished(.reset(requestSent: true))
        #expect(r7 == .fail(status: 503, flags: ["UF"]))
        // …but one that never reached it is.
        var refused = RetryStateMachine(policy: policy, method: "POST", bodyBuffered: false)
        let r8 = refused.attemptFinished(.connectFailure, jitter: 0)
        #expect(r8 == .retry(attempt: 2, backoffMillis: 0))
    }

    @Test func anUnbufferedBodyCannotBeSentTwice() {
        var m = RetryStateMachine(policy: policy, method: "PUT", bodyBuffered: false)
        let r9 = m.attemptFinished(.response(status: 502, grpcStatus: nil))
        #expect(r9 == .deliver(flags: []))
    }

    @Test func conditionsFollowEnvoy() {
        func retries(_ on: [String], _ o: AttemptOutcome) -> Bool {
            var m = RetryStateMachine(policy: HTTPRetry(attempts: 1, retryOn: on), method: "GET", bodyBuffered: true)
            if case .retry = m.attemptFinished(o) { return true } else { return false }
        }
        #expect(retries(["gateway-error"], .response(status: 504, grpcStatus: nil)))
        #expect(!retries(["gateway-error"], .response(status: 500, grpcStatus: nil)))
        #expect(retries(["retriable-4xx"], .response(status: 409, grpcStatus: nil)))
        #expect(!retries(["retriable-4xx"], .response(status: 404, grpcStatus: nil)))
        #expect(retries(["retriable-status-codes", "418"], .response(status: 418, grpcStatus: nil)))
        #expect(retries(["unavailable"], .response(status: 200, grpcStatus: 14)))
        #expect(!retries(["unavailable"], .response(status: 200, grpcStatus: 4)))
        #expect(retries(["deadline-exceeded"], .response(status: 200, grpcStatus: 4)))
        #expect(retries(["refused-stream"], .refusedStream))
        #expect(!retries(["connect-failure"], .reset(requestSent: false)))
        #expect(retries(["5xx"], .perTryTimeout))
        #expect(!retries(["retriable-4xx"], .perTryTimeout))
    }

    @Test func givingUpOnTimeoutsAndFailures() {
        var m = RetryStateMachine(policy: HTTPRetry(attempts: 0, retryOn: ["5xx"]), method: "GET", bodyBuffered: true)
        let r10 = m.attemptFinished(.perTryTimeout)
        #expect(r10 == .fail(status: 504, flags: ["UT", "URX"]))
        var n = RetryStateMachine(policy: HTTPRetry(attempts: 3, retryOn: ["retriable-4xx"]), method: "GET", bodyBuffered: true)
        let r11 = n.attemptFinished(.connectFailure)
        #expect(r11 == .fail(status: 503, flags: ["UF"]))
    }

    @Test func istioDefaultRetriesConnectFailuresTwice() {
        var m = RetryStateMachine(policy: nil, method: "POST", bodyBuffered: false)
        let r12 = m.attemptFinished(.connectFailure, jitter: 0)
        #expect(r12 == .retry(attempt: 2, backoffMillis: 0))
        let r13 = m.attemptFinished(.connectFailure, jitter: 0)
        #expect(r13 == .retry(attempt: 3, backoffMillis: 0))
        let r14 = m.attemptFinished(.connectFailure)
        #expect(r14 == .fail(status: 503, flags: ["UF", "URX"]))
    }
}

@Suite struct OutlierDetectorTests {
    let t0 = Date(timeIntervalSince1970: 1_000_000)
    static func duration(_ s: String) -> IstioDuration { IstioDuration(s)! }

    @Test func consecutive5xxEjectsForBaseTimesCount() {
        var d = OutlierDetector(OutlierDetection(consecutive5xxErrors: 3, interval: Self.duration("1s"), baseEjectionTime: Self.duration("10s"), maxEjectionPercent: 100),
                                endpoints: ["a", "b"])
        let r15 = d.record("a", .status(500), now: t0)
        #expect(!r15)
        let r16 = d.record("a", .status(503), now: t0)
        #expect(!r16)
        let r17 = d.record("a", .localFailure, now: t0)
        #expect(r17)
        #expect(!d.isAvailable("a", now: t0 + 9.9) && d.isAvailable("a", now: t0 + 10))
        #expect(d.available(["a", "b"], now: t0 + 5) == ["b"])
        // Back after 10 s; failing again ejects it for twice as long.
        for _ in 0..<3 { d.record("a", .status(500), now: t0 + 11) }
        #expect(!d.isAvailable("a", now: t0 + 30.9) && d.isAvailable("a", now: t0 + 31))
        #expect(d.timesEjected("a") == 2)
    }

    @Test func successResetsTheCount() {
        var d = OutlierDetector(OutlierDetection(consecutive5xxErrors: 2, maxEjectionPercent: 100), endpoints: ["a"])
        d.record("a", .status(500), now: t0)
        d.record("a", .success, now: t0)
        let r18 = d.record("a", .status(500), now: t0)
        #expect(!r18)
        #expect(d.isAvailable("a", now: t0))
    }

    @Test func gatewayErrorsCountOnly502to504() {
        var d = OutlierDetector(OutlierDetection(consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, maxEjectionPercent: 100), endpoints: ["a"])
        d.record("a", .status(500), now: t0)
        d.record("a", .status(502), now: t0)
        #expect(d.isAvailable("a", now: t0))
        let r19 = d.record("a", .status(504), now: t0)
        #expect(r19)
    }

    @Test func maxEjectionPercentCapsButOneCanAlwaysGo() {
        var d = OutlierDetector(OutlierDetection(consecutive5xxErrors: 1, maxEjectionPercent: 10), endpoints: ["a", "b", "c"])
        let r20 = d.record("a", .status(500), now: t0)
        #expect(r20, "at least one host may be ejected")
        let r21 = d.record("b", .status(500), now: t0)
        #expect(!r21, "a second would exceed 10% of 3")
        var wide = OutlierDetector(OutlierDetection(consecutive5xxErrors: 1, maxEjectionPercent: 50), endpoints: ["a", "b", "c", "d"])
        let r22 = wide.record("a", .status(500), now: t0)
        #expect(r22)
        let r23 = wide.record("b", .status(500), now: t0)
        #expect(r23)
        let r24 = wide.record("c", .status(500), now: t0)
        #expect(!r24)
    }

    @Test func theMultiplierDecaysWhileHealthy() {
        var d = OutlierDetector(OutlierDetection(consecutive5xxErrors: 1, interval: Self.duration("1s"), baseEjectionTime: Self.duration("2s"), maxEjectionPercent: 100),
                                endpoints: ["a"])
        d.record("a", .status(500), now: t0)
        #expect(d.timesEjected("a") == 1)
        d.tick(now: t0 + 2)
        #expect(d.timesEjected("a") == 1, "just back")
        d.tick(now: t0 + 3)
        #expect(d.timesEjected("a") == 0, "healthy for an interval after the ejection ended")
        #expect(d.isAvailable("a", now: t0 + 3))
    }
}

/// Label values that come from upstreams are clamped: a hostile server cannot make the
/// agent keep a new series per response.
@Suite struct MetricLabelTests {
    @Test func statusesOutsideTheirRangesAreOther() {
        #expect(IstioMetrics.label(status: 200) == "200" && IstioMetrics.label(status: 599) == "599" && IstioMetrics.label(status: 100) == "100")
        #expect(IstioMetrics.label(status: 99) == "other" && IstioMetrics.label(status: 600) == "other" && IstioMetrics.label(status: 0) == "other")
        #expect(IstioMetrics.label(grpcStatus: 0) == "0" && IstioMetrics.label(grpcStatus: 16) == "16")
        #expect(IstioMetrics.label(grpcStatus: 17) == "other" && IstioMetrics.label(grpcStatus: -1) == "other"
                && IstioMetrics.label(grpcStatus: 123_456_789) == "other")
    }

    /// Refusal log lines: the first of a kind goes out, the next ones within the interval
    /// are counted and named in the next line that goes out.
    @Test func logThrottleLetsOneLinePerKindThrough() {
        let t = LogThrottle(logger: .init(label: "test"), interval: 10)
        let now = Date()
        #expect(t.allow("a", now: now) == (true, 0))
        #expect(t.allow("a", now: now.addingTimeInterval(1)) == (false, 0))
        #expect(t.allow("b", now: now.addingTimeInterval(1)) == (true, 0))
        #expect(t.allow("a", now: now.addingTimeInterval(2)) == (false, 0))
        #expect(t.allow("a", now: now.addingTimeInterval(11)) == (true, 2))
    }
}
