import Foundation
import Testing
@testable import WeftConfig

/// Parses one in-memory file and returns the snapshot or the diagnostics.
func load(_ yaml: String, file: String = "t.yaml") -> Result<Snapshot, ConfigError> {
    let parsed = ConfigLoader.parse(text: yaml, file: file)
    do { return .success(try ConfigLoader.snapshot(parsed, revision: 1)) } catch { return .failure(error) }
}

func errors(_ yaml: String) -> [String] {
    switch load(yaml) {
    case .success: return []
    case .failure(let e): return e.diagnostics.filter { $0.severity == .error }.map(\.description)
    }
}

let goodService = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: web
spec:
  hosts: [web]
  addresses: [10.96.0.10, 10.96.1.10]
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: 8080
  - number: 53
    name: dns
    protocol: UDP
  resolution: STATIC
  endpoints:
  - address: 10.250.1.1
    weight: 2
    ports: {http: 9090}
  - address: 10.250.1.2
"""

@Suite struct DecodingTests {
    @Test func sharedServicesExampleIsAcceptedUnchanged() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../shared/examples/services.yaml").standardized.path
        let parsed = ConfigLoader.parse(paths: [path])
        let snap = try ConfigLoader.snapshot(parsed, revision: 1)
        let se = try #require(snap.serviceEntries.first)
        #expect(se.hosts == ["reviews.default.svc.cluster.local"])
        #expect(se.addresses.map(\.description) == ["10.96.0.20"])
        let backends = snap.backends(of: se, port: se.ports[0])
        #expect(Set(backends.map { "\($0.address.withPort($0.port))" }) == ["10.250.1.2:9081", "10.250.1.3:9082"])
        #expect(snap.workloadEntries.map(\.cgroup) == ["reviews-v1", "reviews-v2"])
    }

    @Test func serviceEntryFieldsAndPortResolution() throws {
        let snap = try load(goodService).get()
        let se = try #require(snap.serviceEntries.first)
        #expect(se.hosts == ["web.default.svc.cluster.local"])
        #expect(se.addresses.map(\.description) == ["10.96.0.10", "10.96.1.10"])
        let http = snap.backends(of: se, port: se.ports[0])
        // Named endpoint port wins, else targetPort.
        #expect(http.map(\.port) == [9090, 8080])
        #expect(http.map(\.weight) == [2, 1])
        let dns = snap.backends(of: se, port: se.ports[1])
        #expect(dns.map(\.port) == [53, 53])
        #expect(se.ports[1].isUDP)
    }

    @Test func ipv6ServiceAndFamilyMismatch() throws {
        let v6 = goodService.replacingOccurrences(of: "[10.96.0.10, 10.96.1.10]", with: "[\"fd00::10\"]")
            .replacingOccurrences(of: "10.250.1.1", with: "fd00::250:1").replacingOccurrences(of: "10.250.1.2", with: "fd00::250:2")
        let snap = try load(v6).get()
        #expect(snap.serviceEntries[0].addresses.map(\.description) == ["fd00::10"])
        let mixed = errors(goodService.replacingOccurrences(of: "10.96.1.10", with: "\"fd00::10\""))
        #expect(mixed.contains { $0.contains("[SE009]") && $0.contains("of VIP fd00::10 is of the other IP family") }, "\(mixed)")
    }

    @Test func workloadSelectorPicksOnlyMatchingWorkloadsOfTheNamespace() throws {
        let yaml = """
        apiVersion: networking.istio.io/v1beta1
        kind: ServiceEntry
        metadata: {name: api, namespace: shop}
        spec:
          hosts: [api]
          addresses: [10.96.0.30]
          ports: [{number: 80, name: http}]
          resolution: STATIC
          workloadSelector: {labels: {app: api}}
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: WorkloadEntry
        metadata: {name: api-1, namespace: shop}
        spec: {address: 10.250.0.1, labels: {app: api}, ports: {http: 8081}, weight: 3}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: other, namespace: shop}
        spec: {address: 10.250.0.2, labels: {app: other}}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: api-elsewhere, namespace: default}
        spec: {address: 10.250.0.3, labels: {app: api}}
        """
        let snap = try load(yaml).get()
        let se = try #require(snap.serviceEntries.first)
        let b = snap.backends(of: se, port: se.ports[0])
        #expect(b.map { $0.address.description } == ["10.250.0.1"])
        #expect(b.first?.port == 8081)
        #expect(b.first?.weight == 3)
    }

    @Test func yamlSyntaxErrorHasPositionAndCaret() {
        let e = errors("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: [oops\n")
        #expect(e.count == 1)
        #expect(e[0].hasPrefix("t.yaml:5:1: error [YAML001]") || e[0].hasPrefix("t.yaml:4:"), "\(e)")
        #expect(!e[0].contains("\n"), "log lines stay one line")
        guard case .failure(let err) = load("a: [b\n") else { Issue.record("accepted"); return }
        #expect(err.diagnostics[0].snippet?.contains("^") == true)
    }

    @Test func unknownFieldIsAnErrorAtItsPosition() {
        let e = errors(goodService.replacingOccurrences(of: "  resolution: STATIC", with: "  resolution: STATIC\n  colour: blue"))
        #expect(e == ["t.yaml:17:3: error [FLD001] ServiceEntry default/web: spec.colour is not a field of ServiceEntry"])
    }

    @Test func istioFieldWeftDoesNotImplementSaysSo() {
        let e = errors(goodService.replacingOccurrences(of: "  resolution: STATIC", with: "  resolution: STATIC\n  subjectAltNames: [x]"))
        #expect(e.count == 1 && e[0].contains("spec.subjectAltNames is not supported by weft yet"), "\(e)")
    }

    @Test func wrongTypeNamesPathAndValue() {
        let e = errors(goodService.replacingOccurrences(of: "  - number: 80", with: "  - number: eighty"))
        #expect(e == ["t.yaml:9:13: error [TYP001] ServiceEntry default/web: spec.ports[0].number must be an integer (got \"eighty\")"])
    }

    @Test func vipThatIsNotAnAddress() {
        let e = errors(goodService.replacingOccurrences(of: "10.96.0.10,", with: "10.96.0.300,"))
        #expect(e.count == 1 && e[0].contains("t.yaml:7:") && e[0].contains("spec.addresses[0] \"10.96.0.300\" is not an IPv4 or IPv6 address"), "\(e)")
    }

    @Test func portOutOfRange() {
        let e = errors(goodService.replacingOccurrences(of: "targetPort: 8080", with: "targetPort: 70000"))
        #expect(e == ["t.yaml:12:17: error [VAL001] ServiceEntry default/web: spec.ports[0].targetPort must be in 1..65535 (got 70000)"])
    }

    @Test func duplicateServiceAndConflictingVIP() {
        let other = goodService.replacingOccurrences(of: "name: web", with: "name: web2")
        let e = errors(goodService + "\n---\n" + goodService)
        #expect(e.contains { $0.contains("[CFG001]") && $0.contains("defined twice") }, "\(e)")
        let e2 = errors(goodService + "\n---\n" + other)
        #expect(e2.contains { $0.contains("[SE008]") && $0.contains("10.96.0.10:80/tcp is already the address of ServiceEntry default/web") }, "\(e2)")
    }

    @Test func everyProblemIsReportedNotJustTheFirst() {
        let bad = goodService
            .replacingOccurrences(of: "targetPort: 8080", with: "targetPort: 0")
            .replacingOccurrences(of: "10.250.1.2", with: "not-an-ip")
        #expect(errors(bad).count == 2)
    }

    @Test func loadBalancerSettings() throws {
        func dr(_ lb: String) -> String {
            goodService + "\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer:\n" + lb
        }
        var snap = try load(dr("      simple: ROUND_ROBIN\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .roundRobin)
        snap = try load(dr("      consistentHash:\n        useSourceIp: true\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .maglev(tableSize: 16381))
        snap = try load(dr("      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 65521}\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .maglev(tableSize: 65521))
        snap = try load(goodService).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .random)

        snap = try load(dr("      simple: LEAST_REQUEST\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .leastRequest)
        let unsupported = errors(dr("      simple: PASSTHROUGH\n"))
        #expect(unsupported.count == 1 && unsupported[0].contains("PASSTHROUGH is not supported by weft"), "\(unsupported)")
        let bogus = errors(dr("      simple: FASTEST\n"))
        #expect(bogus.count == 1 && bogus[0].contains("\"FASTEST\" is not a load balancer"), "\(bogus)")
        let notPrime = errors(dr("      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 16384}\n"))
        #expect(notPrime.count == 1 && notPrime[0].contains("must be a prime (got 16384)"), "\(notPrime)")
        snap = try load(dr("      consistentHash:\n        httpHeaderName: X-User\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .requestHash(.header("x-user")))
        snap = try load(dr("      consistentHash:\n        httpCookie: {name: session, ttl: 60s, path: /}\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .requestHash(.cookie(name: "session", ttl: IstioDuration("60s"), path: "/")))
        snap = try load(dr("      consistentHash:\n        httpQueryParameterName: user\n")).get()
        #expect(snap.loadBalancer(for: snap.serviceEntries[0]) == .requestHash(.queryParameter("user")))
        let two = errors(dr("      consistentHash:\n        useSourceIp: true\n        httpHeaderName: x-user\n"))
        #expect(two.count == 1 && two[0].contains("set one of useSourceIp, httpHeaderName"), "\(two)")
        let ring = errors(dr("      consistentHash:\n        httpHeaderName: x-user\n        ringHash: {minimumRingSize: 1024}\n"))
        #expect(ring.contains { $0.contains("ringHash is not supported by weft yet") }, "\(ring)")
    }

    @Test func laterKindsAreNamedAsNotYetSupported() {
        let e = errors("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x}\nspec: {servers: []}\n")
        #expect(e == ["t.yaml:2:7: error [KIND002] kind Gateway is not supported by weft yet"])
    }
}

@Suite struct HTTPSettingsDecodingTests {
    @Test func upgradePolicyMustBeOneOfIstios() {
        let dr = { (policy: String) in errors(goodService + "\n" + """
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec:
              host: web
              trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: \(policy), useClientProtocol: false}}}
            """) }
        #expect(dr("UPGRADE") == [])
        #expect(dr("DEFAULT") == [])
        let bad = dr("ALWAYS")
        #expect(bad.count == 1 && bad[0].contains("DR015") && bad[0].contains("h2UpgradePolicy") && bad[0].contains("ALWAYS"), "\(bad)")
    }
}

