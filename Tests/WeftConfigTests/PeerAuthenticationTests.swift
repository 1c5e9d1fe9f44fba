import Foundation
import Testing
@testable import WeftConfig

private let workloads = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop]
  addresses: [10.96.0.1]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop, annotations: {weft.io/node: n1}}
spec: {address: 10.0.0.1, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: shop, annotations: {weft.io/node: n1}}
spec: {address: 10.0.0.2, labels: {app: db}}
"""

private func pa(_ name: String, _ ns: String, selector: String? = nil, mode: String?, ports: [UInt16: String] = [:]) -> String {
    var s = "\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: \(name), namespace: \(ns)}\nspec:\n"
    if let selector { s += "  selector: {matchLabels: {app: \(selector)}}\n" }
    if let mode { s += "  mtls: {mode: \(mode)}\n" }
    if !ports.isEmpty { s += "  portLevelMtls: {" + ports.map { "\($0.key): {mode: \($0.value)}" }.joined(separator: ", ") + "}\n" }
    return s
}

private func modes(_ policies: String...) throws -> (web: MTLSMode, web8080: MTLSMode, db: MTLSMode, snapshot: Snapshot) {
    let snap = try load(workloads + policies.joined()).get()
    let web = snap.workloadEntries.first { $0.metadata.name == "web" }!
    let db = snap.workloadEntries.first { $0.metadata.name == "db" }!
    return (snap.mtls(for: web, port: nil).mode, snap.mtls(for: web, port: 8080).mode, snap.mtls(for: db, port: 8080).mode, snap)
}

@Suite struct PeerAuthenticationTests {
    @Test func withoutAnyPolicyEverythingIsPermissive() throws {
        let m = try modes()
        #expect([m.web, m.web8080, m.db] == [.permissive, .permissive, .permissive])
    }

    @Test func workloadBeatsNamespaceBeatsMesh() throws {
        var m = try modes(pa("mesh", "weft-system", mode: "STRICT"))
        #expect([m.web, m.web8080, m.db] == [.strict, .strict, .strict])
        m = try modes(pa("mesh", "weft-system", mode: "STRICT"), pa("ns", "shop", mode: "PERMISSIVE"))
        #expect([m.web, m.db] == [.permissive, .permissive])
        m = try modes(pa("mesh", "weft-system", mode: "STRICT"), pa("ns", "shop", mode: "PERMISSIVE"), pa("web", "shop", selector: "web", mode: "DISABLE"))
        #expect([m.web, m.web8080, m.db] == [.disable, .disable, .permissive])
        // A namespace-wide policy of another namespace says nothing about shop.
        m = try modes(pa("mesh", "weft-system", mode: "DISABLE"), pa("other", "billing", mode: "STRICT"))
        #expect(m.web == .disable)
    }

    @Test func unsetInheritsAndPortLevelWinsForItsPort() throws {
        // The workload policy's own mode is UNSET: its ports without a setting take the
        // namespace's STRICT; port 8080 is DISABLE.
        var m = try modes(pa("ns", "shop", mode: "STRICT"), pa("web", "shop", selector: "web", mode: "UNSET", ports: [8080: "DISABLE"]))
        #expect([m.web, m.web8080, m.db] == [.strict, .disable, .strict])
        // UNSET at port level inherits the workload's mode, UNSET namespace the mesh's.
        m = try modes(pa("mesh", "weft-system", mode: "STRICT"), pa("ns", "shop", mode: "UNSET"),
                      pa("web", "shop", selector: "web", mode: "PERMISSIVE", ports: [8080: "UNSET"]))
        #expect([m.web, m.web8080, m.db] == [.permissive, .permissive, .strict])
        let web = m.snapshot.workloadEntries.first { $0.metadata.name == "web" }!
        #expect(m.snapshot.mtls(for: web, port: 8080).description == "PERMISSIVE (PeerAuthentication shop/web)")
    }

    @Test func autoMTLSReadsTheDestinationsPolicy() throws {
        // DISABLE on the workload port: the service is not tunneled, so it stays on L4.
        var m = try modes(pa("web", "shop", selector: "web", mode: "STRICT", ports: [8080: "DISABLE"]))
        let se = m.snapshot.serviceEntries[0]
        #expect(!m.snapshot.needsTunnel(se, port: se.ports[0]))
        m = try modes(pa("web", "shop", selector: "web", mode: "PERMISSIVE"))
        #expect(m.snapshot.needsTunnel(se, port: se.ports[0]))
    }

    @Test func twoWorkloadPoliciesOnOneWorkloadAreWarnedAbout() throws {
        let m = try modes(pa("b-second", "shop", selector: "web", mode: "DISABLE"), pa("a-first", "shop", selector: "web", mode: "STRICT"))
        #expect(m.web == .strict)
        #expect(m.snapshot.warnings.contains { $0.code == "PA004" && $0.message.contains("weft applies a-first") }, "\(m.snapshot.warnings)")
    }

    @Test func theExampleIsStrictForItsNamespaceOnly() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/examples").standardized.path
        let example = try String(contentsOfFile: dir + "/mtls-strict.yaml", encoding: .utf8)
        let snap = try load(workloads + "\n---\n" + example + """
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: api, namespace: production}
        spec: {address: 10.0.0.3}
        """).get()
        #expect(snap.warnings.isEmpty, "\(snap.warnings)")
        let byName = Dictionary(uniqueKeysWithValues: snap.workloadEntries.map { ($0.metadata.name, $0) })
        #expect(snap.mtls(for: byName["api"]!, port: 80).mode == .strict)
        #expect(snap.mtls(for: byName["web"]!, port: 8080).mode == .permissive)
    }
}
