import Foundation
import Testing
import WeftConfig
@testable import WeftProxy

/// The service graph as the agent derives it from its own metrics.
@Suite struct GraphTests {
    func request(_ peers: Peers, status: Int, ms: Double) -> ProxyEvent {
        .request(RequestRecord(start: Date(), peers: peers, method: "GET", path: "/", authority: "web", protocolName: "HTTP/1.1", status: status,
                               grpcStatus: nil, flags: [], durationMillis: ms, requestBytes: 0, responseBytes: 10, upstream: nil, attempts: 1,
                               requestID: nil, route: nil, cluster: nil))
    }

    @Test func edgesRatesErrorsAndP99() throws {
        let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: """
            apiVersion: networking.istio.io/v1
            kind: WorkloadEntry
            metadata: {name: frontend, namespace: shop}
            spec: {address: 10.0.0.1}
            ---
            apiVersion: networking.istio.io/v1
            kind: WorkloadEntry
            metadata: {name: web-1, namespace: shop}
            spec: {address: 10.0.0.2}
            """, file: "t.yaml"), revision: 1)
        let fe = try #require(snap.workloadEntries.first { $0.metadata.name == "frontend" })
        let web = try #require(snap.workloadEntries.first { $0.metadata.name == "web-1" })
        let m = IstioMetrics()
        let service = ResourceID(kind: "ServiceEntry", namespace: "shop", name: "web")
        let out = Peers(client: "10.0.0.1:1", source: fe, destinationHost: "web.shop.svc.cluster.local", destinationService: service,
                        destinationWorkload: web, destinationPrincipal: "spiffe://cluster.local/ns/shop/sa/default")
        let anonymous = Peers(client: "10.9.9.9:1", source: nil, destinationHost: "web.shop.svc.cluster.local", destinationService: service,
                              destinationWorkload: web, reporter: "destination")
        m.record(request(out, status: 200, ms: 3))
        let recorder = GraphRecorder { m.registry.emitToString() }
        recorder.sample(now: 1000)
        // In the window: 18 fast answers and 2 slow errors from the frontend (through the
        // tunnel), 5 plaintext requests from no workload.
        for _ in 0..<18 { m.record(request(out, status: 200, ms: 3)) }
        for _ in 0..<2 { m.record(request(out, status: 503, ms: 700)) }
        for _ in 0..<5 { m.record(request(anonymous, status: 200, ms: 1)) }
        let g = recorder.graph(window: 10, now: 1010)
        #expect(g.window == 10)
        #expect(Set(g.nodes.map(\.id)) == ["workload:shop/frontend", "service:web.shop.svc.cluster.local", "workload:shop/web-1", "unknown:unknown"])
        let call = try #require(g.edges.first { $0.source == "workload:shop/frontend" })
        #expect(call.destination == "service:web.shop.svc.cluster.local" && call.protocolName == "http" && call.mutualTLS)
        #expect(call.rate == 2 && call.errorRate == 0.1 && call.total == 21)
        // 99 % of 20 is 19.8: past the 18 under 5 ms, in the 500–1000 ms bucket.
        #expect(call.p99Millis.map { $0 > 500 && $0 <= 1000 } == true, "\(String(describing: call.p99Millis))")
        let plain = try #require(g.edges.first { $0.source == "unknown:unknown" })
        #expect(!plain.mutualTLS && plain.rate == 0.5 && plain.errorRate == 0)
        // service → the workload that served it: everything, mTLS only if all was.
        let served = try #require(g.edges.first { $0.source == "service:web.shop.svc.cluster.local" })
        #expect(served.destination == "workload:shop/web-1" && served.total == 26 && !served.mutualTLS)
    }

    /// Two workloads of one node, through its own tunnel: the agent reports each request
    /// as source and as destination; the graph counts it once.
    @Test func oneAgentBothEndsCountsOnce() throws {
        let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: """
            apiVersion: networking.istio.io/v1
            kind: WorkloadEntry
            metadata: {name: a}
            spec: {address: 10.0.0.1}
            ---
            apiVersion: networking.istio.io/v1
            kind: WorkloadEntry
            metadata: {name: b}
            spec: {address: 10.0.0.2}
            """, file: "t.yaml"), revision: 1)
        let (a, b) = (snap.workloadEntries[0], snap.workloadEntries[1])
        let m = IstioMetrics()
        let svc = ResourceID(kind: "ServiceEntry", namespace: "default", name: "b")
        let out = Peers(client: "10.0.0.1:1", source: a, destinationHost: "b", destinationService: svc, destinationWorkload: b,
                        destinationPrincipal: "spiffe://cluster.local/ns/default/sa/default")
        var into = out
        into.reporter = "destination"
        into.mutualTLS = true
        for _ in 0..<3 {
            m.record(request(out, status: 200, ms: 1))
            m.record(request(into, status: 200, ms: 1))
        }
        let g = GraphRecorder { m.registry.emitToString() }.graph(window: 60)
        #expect(g.edges.map(\.total) == [3, 3] && g.edges.allSatisfy(\.mutualTLS), "\(g.edges)")
    }

    @Test func oneSampleHasNoRates() {
        let m = IstioMetrics()
        let g = GraphRecorder { m.registry.emitToString() }.graph(window: 60)
        #expect(g.window == 0 && g.edges.isEmpty)
    }

    @Test func promTextLines() throws {
        let (name, labels, value) = try #require(PromText.parse(#"x_total{a="q\"uote",b="back\\slash",c="new\nline"} 42.5"#[...]))
        #expect(name == "x_total" && value == 42.5 && labels == ["a": "q\"uote", "b": "back\\slash", "c": "new\nline"])
        #expect(PromText.parse("up 1"[...])?.2 == 1)
        #expect(PromText.parse("broken{a=\"x\""[...]) == nil)
    }
}
