import Foundation
import Prometheus
import Testing
import WeftConfig
@testable import WeftProxy

/// Istio's series as the registry exposes them.
@Suite struct MetricsTests {
    static let yaml = """
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: frontend-7, namespace: shop}
    spec: {address: 10.0.0.1, serviceAccount: fe, labels: {app: frontend, version: v2}}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: reviews-1, namespace: shop}
    spec:
      address: 10.0.0.2
      labels: {app: reviews, service.istio.io/canonical-name: reviews-canon, app.kubernetes.io/version: "1.4"}
    """

    func workloads() throws -> (WorkloadEntry, WorkloadEntry) {
        let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: Self.yaml, file: "t.yaml"), revision: 1)
        let byName = Dictionary(uniqueKeysWithValues: snap.workloadEntries.map { ($0.metadata.name, $0) })
        return (try #require(byName["frontend-7"]), try #require(byName["reviews-1"]))
    }

    func request(_ peers: Peers, status: Int = 200) -> RequestRecord {
        RequestRecord(start: Date(), peers: peers, method: "GET", path: "/", authority: "reviews", protocolName: "HTTP/1.1", status: status,
                      grpcStatus: nil, flags: [], durationMillis: 3, requestBytes: 0, responseBytes: 120, upstream: nil, attempts: 1,
                      requestID: nil, route: nil, cluster: nil)
    }

    /// The lines of `name` in the exposition.
    func lines(_ m: IstioMetrics, _ name: String) -> [String] {
        m.registry.emitToString().split(separator: "\n").map(String.init).filter { $0.hasPrefix(name + "{") }
    }

    @Test func istioLabelsFromTheWorkloads() throws {
        let (fe, reviews) = try workloads()
        let m = IstioMetrics()
        let peers = Peers(client: "10.0.0.1:5000", source: fe, destinationHost: "reviews.shop.svc.cluster.local",
                          destinationService: ResourceID(kind: "ServiceEntry", namespace: "shop", name: "reviews"), destinationWorkload: reviews,
                          reporter: "destination", sourcePrincipal: "spiffe://cluster.local/ns/shop/sa/fe",
                          destinationPrincipal: "spiffe://cluster.local/ns/shop/sa/default", mutualTLS: true, memo: SeriesMemo())
        m.record(.request(request(peers)))
        m.record(.request(request(peers)))
        m.record(.request(request(peers, status: 503)))
        let requests = lines(m, "istio_requests_total")
        #expect(requests.count == 2)
        let ok = try #require(requests.first { $0.contains("response_code=\"200\"") })
        for pair in ["reporter=\"destination\"", "source_workload=\"frontend-7\"", "source_canonical_service=\"frontend\"",
                     "source_canonical_revision=\"v2\"", "source_workload_namespace=\"shop\"",
                     "source_principal=\"spiffe://cluster.local/ns/shop/sa/fe\"", "source_app=\"frontend\"", "source_version=\"v2\"",
                     "destination_workload=\"reviews-1\"", "destination_canonical_service=\"reviews-canon\"",
                     "destination_canonical_revision=\"1.4\"", "destination_app=\"reviews\"", "destination_version=\"unknown\"",
                     "destination_principal=\"spiffe://cluster.local/ns/shop/sa/default\"",
                     "destination_service=\"reviews.shop.svc.cluster.local\"", "destination_service_name=\"reviews\"",
                     "destination_service_namespace=\"shop\"", "request_protocol=\"http\"", "response_flags=\"-\"",
                     "connection_security_policy=\"mutual_tls\""] {
            #expect(ok.contains(pair), "\(pair) in \(ok)")
        }
        #expect(ok.hasSuffix(" 2"))
        #expect(lines(m, "istio_request_duration_milliseconds_bucket").contains { $0.contains("le=\"5.0\"") && $0.contains("response_code=\"200\"") && $0.hasSuffix(" 2") })
    }

    /// Connections with their own memos count into the same series; a series found
    /// through one connection's memo is the registry's.
    @Test func connectionsShareSeries() throws {
        let (fe, reviews) = try workloads()
        let m = IstioMetrics()
        var peers = Peers(client: "10.0.0.1:5000", source: fe, destinationHost: "reviews", destinationService: ResourceID(kind: "ServiceEntry", namespace: "shop", name: "reviews"),
                          destinationWorkload: reviews)
        for _ in 0..<3 {
            peers.memo = SeriesMemo()
            for _ in 0..<4 { m.record(.request(request(peers))) }
        }
        peers.memo = nil
        m.record(.request(request(peers)))
        let requests = lines(m, "istio_requests_total")
        #expect(requests.count == 1 && requests[0].hasSuffix(" 13"), "\(requests)")
        // The source side does not know the connection's security: Istio's "unknown".
        #expect(requests[0].contains("connection_security_policy=\"unknown\"") && requests[0].contains("reporter=\"source\""))
    }
}
