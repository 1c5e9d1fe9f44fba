import Foundation
import Testing
import WeftConfig
@testable import WeftDataplane

private func desired(_ extra: String, steering: Bool = true) throws -> [InboundKey: InboundRule] {
    let yaml = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: web, namespace: shop}
    spec:
      hosts: [web.shop]
      addresses: [10.96.0.1]
      ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}, {number: 5432, name: pg, protocol: TCP}]
      resolution: STATIC
      workloadSelector: {labels: {app: web}}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: web, namespace: shop, annotations: {weft.io/node: n1}}
    spec: {address: 10.0.0.1, labels: {app: web}, ports: {metrics: 9090}}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: far, namespace: shop, annotations: {weft.io/node: n2}}
    spec: {address: 10.0.9.1, labels: {app: web}}
    """ + extra
    let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "t.yaml"), revision: 1)
    return DesiredState(snapshot: snap, node: "n1", steering: steering).inbound
}

private func key(_ port: UInt16) -> InboundKey { InboundKey(address: IPAddress("10.0.0.1")!, port: port) }

@Suite struct InboundPolicyTests {
    @Test func strictDropsEveryPortExceptThoseThatSayOtherwise() throws {
        let rules = try desired("""

        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: web, namespace: shop}
        spec:
          selector: {matchLabels: {app: web}}
          mtls: {mode: STRICT}
          portLevelMtls: {9090: {mode: PERMISSIVE}}
        """)
        // Other node's workload: not this node's business.
        #expect(rules == [key(0): InboundRule(action: .drop, authz: false), key(9090): .pass])
    }

    @Test func permissiveSteersHTTPForTelemetryOnlyWhenTheAgentCanTakeIt() throws {
        #expect(try desired("") == [key(8080): InboundRule(action: .steer, authz: false), key(0): .pass])
        #expect(try desired("", steering: false).isEmpty)
    }

    @Test func authorizationSteersEveryPortAndRefusesWhatCannotBeSteered() throws {
        let policy = """

        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: only-frontend, namespace: shop}
        spec:
          rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]}]
        """
        let steered = InboundRule(action: .steer, authz: true)
        #expect(try desired(policy) == [key(0): steered])
        // Without an inbound listener the rule is the same: the kernel refuses what it
        // cannot hand to the agent.
        #expect(try desired(policy, steering: false) == [key(0): steered])
    }

    @Test func portEntriesGoInBeforeTheDefaultAndComeOutAfterIt() throws {
        var r = Reconciler(drainPeriod: 1)
        var state = DesiredState(snapshot: .empty(), node: "n1")
        state.inbound = [key(0): InboundRule(action: .drop, authz: false), key(9090): .pass, key(8080): .pass]
        let put = try r.plan(actual: fresh(), desired: state, cgroupIDs: [:], now: Date())
        #expect(put == [.putInbound(key(8080), .pass), .putInbound(key(9090), .pass), .putInbound(key(0), InboundRule(action: .drop, authz: false))])
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        simulate(&actual, put, tables: &tables)
        state.inbound = [:]
        let del = try r.plan(actual: actual, desired: state, cgroupIDs: [:], now: Date())
        #expect(del == [.deleteInbound(key(0)), .deleteInbound(key(8080)), .deleteInbound(key(9090))])
    }
}
