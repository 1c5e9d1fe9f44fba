import Testing
@testable import WeftConfig

/// Telemetry's tracing as Istio merges it: mesh, then namespace, then the workload's own,
/// field by field, per side.
@Suite struct TelemetryTests {
    static let yaml = """
    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: mesh-default, namespace: weft-system}
    spec:
      tracing: [{randomSamplingPercentage: 10}]
    ---
    apiVersion: telemetry.istio.io/v1alpha1
    kind: Telemetry
    metadata: {name: shop, namespace: shop}
    spec:
      tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 50}]
    ---
    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: reviews, namespace: shop}
    spec:
      selector: {matchLabels: {app: reviews}}
      tracing:
      - {match: {mode: SERVER}, disableSpanReporting: true}
      - {match: {mode: CLIENT}, randomSamplingPercentage: 0}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: reviews-1, namespace: shop}
    spec: {address: 10.0.0.2, labels: {app: reviews}}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: cart-1, namespace: shop}
    spec: {address: 10.0.0.3, labels: {app: cart}}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: web-1, namespace: default}
    spec: {address: 10.0.0.4}
    """

    @Test func mergedPerWorkloadAndSide() throws {
        let snap = try load(Self.yaml).get()
        func policy(_ name: String?, _ side: TraceMode) -> TracingPolicy {
            snap.tracing(for: name.flatMap { n in snap.workloadEntries.first { $0.metadata.name == n } }, side: side)
        }
        #expect(policy(nil, .client) == TracingPolicy(samplingPercentage: 10))
        #expect(policy("web-1", .server) == TracingPolicy(samplingPercentage: 10))
        // The namespace's CLIENT rule beats the mesh's; its SERVER side inherits.
        #expect(policy("cart-1", .client) == TracingPolicy(samplingPercentage: 50))
        #expect(policy("cart-1", .server) == TracingPolicy(samplingPercentage: 10))
        // The workload's own rules beat both, field by field.
        #expect(policy("reviews-1", .client) == TracingPolicy(samplingPercentage: 0))
        #expect(policy("reviews-1", .server) == TracingPolicy(samplingPercentage: 10, reportSpans: false))
    }

    @Test func noTelemetryLeavesTheAgentsDefault() throws {
        let snap = try load(goodService).get()
        #expect(snap.tracing(for: nil, side: .server) == TracingPolicy())
    }
}
