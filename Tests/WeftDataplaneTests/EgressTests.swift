import Foundation
import Testing
import WeftConfig
@testable import WeftDataplane

/// REGISTRY_ONLY: what the registry lets workloads reach, and the order the kernel learns it.
@Suite struct EgressTests {
    static let mesh = """
    apiVersion: weft.io/v1alpha1
    kind: MeshConfig
    metadata: {name: mesh, namespace: weft-system}
    spec:
      outboundTrafficPolicy: {mode: REGISTRY_ONLY}
    """
    static let services = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: web}
    spec:
      hosts: [web]
      addresses: [10.96.0.1]
      ports: [{number: 80, name: http, targetPort: 8080}]
      resolution: STATIC
      endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2, ports: {http: 9090}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: partners}
    spec:
      hosts: [partners.example.com]
      addresses: [203.0.113.7]
      ports: [{number: 443, name: tls, protocol: TLS}]
      resolution: NONE
      location: MESH_EXTERNAL
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: api}
    spec:
      hosts: [api.example.com]
      addresses: [10.96.0.2]
      ports: [{number: 443, name: tls, protocol: TLS}]
      resolution: DNS
      location: MESH_EXTERNAL
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: db}
    spec: {address: 10.0.0.9, ports: {sql: 5432}}
    """

    func desired(_ yaml: String, resolved: [String: [String]] = [:], resolvers: [String] = []) throws -> DesiredState {
        var options = ValidationOptions()
        options.resolved = ResolvedNames(addresses: resolved.mapValues { $0.map { IPAddress($0)! } })
        let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "t.yaml"), revision: 1, options: options)
        return DesiredState(snapshot: snap, node: "n", resolvers: resolvers.map { IPAddress($0)! })
    }

    @Test func registryOnlyListsBackendsPassthroughAddressesWorkloadsAndResolvers() throws {
        let d = try desired(Self.mesh + "\n---\n" + Self.services, resolved: ["api.example.com": ["198.51.100.1", "2001:db8::1"]],
                            resolvers: ["192.0.2.53"])
        #expect(d.egressMode == .registryOnly)
        #expect(Set(d.egress.map(\.description)) == [
            "10.0.0.1:8080", "10.0.0.2:9090", // endpoints, on the ports they serve
            "203.0.113.7:443",                // resolution NONE: passthrough to its address
            "198.51.100.1:443",               // resolved, of the VIP's family only
            "10.0.0.9:5432",                  // a WorkloadEntry's named port
            "192.0.2.53:53",                  // the node's resolver
        ])
        // A NONE service's address is not a frontend: its connections pass through.
        #expect(!d.services.keys.contains { $0.address == IPAddress("203.0.113.7")! })
        // The resolved address is the DNS service's backend.
        let api = d.services.values.first { $0.service == "default/api" }!
        #expect(api.backends.map(\.description) == ["198.51.100.1:443"])
    }

    @Test func allowAnyKeepsTheMapEmpty() throws {
        let d = try desired(Self.services)
        #expect(d.egressMode == .allowAny && d.egress.isEmpty)
    }

    @Test func destinationsGoInBeforeTheModeAndComeOutAfterIt() throws {
        var r = Reconciler(drainPeriod: 10)
        var actual = fresh()
        var tables: [UInt32: [UInt32]] = [:]
        let on = try desired(Self.mesh + "\n---\n" + Self.services)
        var ops = try r.plan(actual: actual, desired: on, cgroupIDs: [:], now: Date())
        let mode = ops.firstIndex { $0 == .setEgressMode(.registryOnly) }!
        #expect(ops.indices.filter { if case .putEgress = ops[$0] { return true } else { return false } }.allSatisfy { $0 < mode })
        simulate(&actual, ops, tables: &tables)
        #expect(actual.egress == on.egress)
        #expect(try r.plan(actual: actual, desired: on, cgroupIDs: [:], now: Date()).isEmpty)

        let off = try desired(Self.services)
        ops = try r.plan(actual: actual, desired: off, cgroupIDs: [:], now: Date())
        let offAt = ops.firstIndex { $0 == .setEgressMode(.allowAny) }!
        let deletes = ops.indices.filter { if case .deleteEgress = ops[$0] { return true } else { return false } }
        #expect(deletes.count == on.egress.count && deletes.allSatisfy { $0 > offAt })
        simulate(&actual, ops, tables: &tables)
        #expect(actual.egress.isEmpty && actual.egressMode == .allowAny)
    }
}
