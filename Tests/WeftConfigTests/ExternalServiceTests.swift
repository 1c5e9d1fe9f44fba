import Testing
@testable import WeftConfig

/// resolution DNS / DNS_ROUND_ROBIN / NONE, location MESH_EXTERNAL, and the MeshConfig.
@Suite struct ExternalServiceTests {
    func entry(_ body: String, name: String = "ext") -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: \(name)}
        spec:
        \(body.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        """
    }

    func snapshot(_ yaml: String, resolved: [String: [String]] = [:]) throws -> Snapshot {
        var options = ValidationOptions()
        options.resolved = ResolvedNames(addresses: resolved.mapValues { $0.map { IPAddress($0)! } })
        return try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "t.yaml"), revision: 1, options: options)
    }

    func backends(_ s: Snapshot, _ name: String = "ext") -> [String] {
        let se = s.serviceEntries.first { $0.metadata.name == name }!
        return s.backends(of: se, port: se.ports[0]).map { "\($0.address.withPort($0.port)) w\($0.weight)" }
    }

    @Test func dnsEndpointsAreTheirResolvedAddressesOfTheVIPsFamily() throws {
        let yaml = entry("""
        hosts: [api.example.com]
        addresses: [10.96.0.20]
        ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}]
        resolution: DNS
        location: MESH_EXTERNAL
        endpoints:
        - {address: a.api.example.com., weight: 3}
        - {address: b.api.example.com, ports: {tls: 9443}}
        - {address: 192.0.2.9}
        """)
        let s = try snapshot(yaml, resolved: ["a.api.example.com": ["198.51.100.1", "2001:db8::1", "198.51.100.2"]])
        #expect(s.namesToResolve == ["a.api.example.com": [4], "b.api.example.com": [4]])
        // b is not resolved yet: it stands for nothing; the IP endpoint is itself.
        #expect(backends(s) == ["192.0.2.9:8443 w1", "198.51.100.1:8443 w3", "198.51.100.2:8443 w3"])
        let later = s.resolving(ResolvedNames(addresses: ["b.api.example.com": [IPAddress("198.51.100.9")!]]))
        #expect(later.revision == s.revision)
        #expect(backends(later) == ["192.0.2.9:8443 w1", "198.51.100.9:9443 w1"])
    }

    @Test func roundRobinTakesTheFirstAddressAndHostsStandInForMissingEndpoints() throws {
        let yaml = entry("""
        hosts: [api.example.com]
        ports: [{number: 80, name: http}]
        resolution: DNS_ROUND_ROBIN
        """)
        let s = try snapshot(yaml, resolved: ["api.example.com": ["198.51.100.3", "198.51.100.4"]])
        // No addresses of its own: one is allocated (IPv4), and the host is what is resolved.
        #expect(s.serviceEntries[0].addresses.first?.description.hasPrefix("240.240.") == true)
        #expect(s.namesToResolve == ["api.example.com": [4]])
        #expect(backends(s) == ["198.51.100.3:80 w1"])
    }

    @Test func noneIsPassthroughWithoutAllocatedAddress() throws {
        let s = try snapshot(entry("""
        hosts: [partners.example.com]
        ports: [{number: 443, name: tls, protocol: TLS}]
        resolution: NONE
        location: MESH_EXTERNAL
        """))
        #expect(s.serviceEntries[0].addresses.isEmpty && s.serviceEntries[0].resolution == .none)
        #expect(backends(s).isEmpty && s.namesToResolve.isEmpty)
    }

    @Test func eachMisuseIsOneErrorNamingIt() {
        func only(_ body: String) -> [String] { errors(entry(body)) }
        let ports = "ports: [{number: 80, name: http}]"
        #expect(only("hosts: [a.example.com]\n\(ports)\nresolution: NONE\nendpoints: [{address: 192.0.2.1}]").first?.contains("SE012") == true)
        #expect(only("hosts: [\"*.example.com\"]\n\(ports)\nresolution: DNS").first?.contains("SE013") == true)
        #expect(only("hosts: [a.example.com]\n\(ports)\nresolution: DNS\nworkloadSelector: {labels: {app: a}}").first?.contains("SE011") == true)
        #expect(only("hosts: [a.example.com]\n\(ports)\nresolution: STATIC\nlocation: MESH_EXTERNAL\nworkloadSelector: {labels: {app: a}}").first?.contains("SE011") == true)
        let named = only("hosts: [a.example.com]\n\(ports)\nresolution: STATIC\nendpoints: [{address: db.example.com}]")
        #expect(named.count == 1 && named[0].contains("WE001") && named[0].contains("resolution DNS"))
        let bad = only("hosts: [a.example.com]\n\(ports)\nresolution: DNS\nendpoints: [{address: \"no spaces.example.com\"}]")
        #expect(bad.count == 1 && bad[0].contains("neither an IP address nor a DNS name"))
        #expect(only("hosts: [a.example.com]\n\(ports)\nresolution: LOGICAL").first?.contains("SE005") == true)
        #expect(only("hosts: [a.example.com]\n\(ports)\nresolution: STATIC\nlocation: OUTSIDE").first?.contains("SE006") == true)
    }

    func meshConfig(_ spec: String, namespace: String = "weft-system", name: String = "mesh") -> String {
        """
        apiVersion: weft.io/v1alpha1
        kind: MeshConfig
        metadata: {name: \(name), namespace: \(namespace)}
        spec:
        \(spec.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        """
    }

    @Test func meshConfigSetsTheOutboundPolicyOnceForTheMesh() throws {
        #expect(try snapshot(meshConfig("outboundTrafficPolicy: {mode: REGISTRY_ONLY}")).outboundTrafficPolicy == .registryOnly)
        #expect(try snapshot(meshConfig("outboundTrafficPolicy: {mode: ALLOW_ANY}")).outboundTrafficPolicy == .allowAny)
        #expect(try snapshot(entry("hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: NONE")).outboundTrafficPolicy == .allowAny)
        #expect(errors(meshConfig("outboundTrafficPolicy: {mode: DENY}")).first?.contains("MC001") == true)
        #expect(errors(meshConfig("outboundTrafficPolicy: {mode: REGISTRY_ONLY}", namespace: "prod")).first?.contains("MC002") == true)
        let two = errors(meshConfig("outboundTrafficPolicy: {mode: REGISTRY_ONLY}") + "\n---\n" + meshConfig("outboundTrafficPolicy: {mode: ALLOW_ANY}", name: "other"))
        #expect(two.count == 1 && two[0].contains("MC003"))
        // Istio's other meshConfig fields are refused by name, not ignored.
        let istio = errors(meshConfig("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\naccessLogFile: /dev/stdout"))
        #expect(istio.count == 1 && istio[0].contains("FLD002") && istio[0].contains("accessLogFile"))
        #expect(errors(meshConfig("outbound: {}")).first?.contains("FLD001") == true)
    }
}
