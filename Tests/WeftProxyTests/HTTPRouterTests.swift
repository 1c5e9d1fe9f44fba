import Foundation
import NIOHTTP1
import Testing
import WeftConfig
@testable import WeftProxy

/// A router for the only VirtualService in `yaml` (plus whatever else the YAML defines).
func router(_ yaml: String) throws -> HTTPRouter {
    let snap = try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "t.yaml"), revision: 1)
    return HTTPRouter(routes: try #require(snap.virtualServices.first).http)
}

func vs(_ http: String) -> String {
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n" + http
}

func req(_ path: String, method: String = "GET", headers: [(String, String)] = [], port: UInt16 = 80, labels: Labels = [:]) -> RequestAttributes {
    RequestAttributes(method: method, path: path, authority: "web", headers: headers.map { (name: $0.0, value: $0.1) }, port: port, sourceLabels: labels)
}

extension RouteDecision {
    var subset: String? { if case .forward(let f) = self { return f.destination.subset } else { return nil } }
    var forward: ForwardDecision? { if case .forward(let f) = self { return f } else { return nil } }
}

@Suite struct HTTPRouterTests {
    @Test func sharedCanaryExampleSplitsAndMatchesLikeIstio() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../shared/examples/reviews-canary.yaml").standardized.path
        let snap = try ConfigLoader.snapshot(ConfigLoader.parse(paths: [path]), revision: 1)
        let r = HTTPRouter(routes: snap.virtualServices[0].http)
        // Header-matched canary: always v2, whatever the draw.
        for i in 0..<100 {
            #expect(r.decide(req("/", headers: [("User-Type", "beta")]), random: Double(i) / 100).subset == "v2")
        }
        // 80/20 over evenly spread draws is exactly 800/200.
        var count: [String: Int] = [:]
        for i in 0..<1000 { count[r.decide(req("/"), random: Double(i) / 1000).subset ?? "-", default: 0] += 1 }
        #expect(count == ["v1": 800, "v2": 200])
        #expect(r.decide(req("/", headers: [("user-type", "betamax")]), random: 0.99).subset == "v2") // falls to the split
    }

    @Test func uriMatchingFollowsEnvoy() throws {
        let r = try router(vs("""
          - name: exact
            match: [{uri: {exact: /api}}]
            route: [{destination: {host: web, subset: exact}}]
          - name: regex
            match: [{uri: {regex: "/v[0-9]+/.*"}}]
            route: [{destination: {host: web, subset: regex}}]
          - name: prefix
            match: [{uri: {prefix: /Static}, ignoreUriCase: true}]
            route: [{destination: {host: web, subset: prefix}}]
        """) + "\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec:\n  host: web\n  subsets: [{name: exact}, {name: regex}, {name: prefix}]\n")
        #expect(r.decide(req("/api?x=1"), random: 0).subset == "exact")     // query ignored by exact
        #expect(r.decide(req("/api/"), random: 0) == .noRoute)
        #expect(r.decide(req("/v2/users"), random: 0).subset == "regex")
        #expect(r.decide(req("/v2x/users"), random: 0) == .noRoute)          // regex must match the whole path
        #expect(r.decide(req("/static/app.js"), random: 0).subset == "prefix") // ignoreUriCase
        #expect(r.decide(req("/API"), random: 0) == .noRoute)                // exact is case-sensitive here
    }

    @Test func headersQueryMethodPortAndSourceLabels() throws {
        let r = try router(vs("""
          - name: a
            match:
            - headers: {x-debug: {prefix: ""}}
              withoutHeaders: {x-skip: {exact: "1"}}
              queryParams: {name: {exact: "a b"}}
              method: {regex: "GET|HEAD"}
              port: 8080
              sourceLabels: {app: frontend}
            route: [{destination: {host: a}}]
          - name: b
            route: [{destination: {host: b}}]
        """))
        let good = req("/x?other=1&name=a%20b", headers: [("X-Debug", "")], port: 8080, labels: ["app": "frontend", "v": "1"])
        #expect(r.decide(good, random: 0).forward?.routeName == "a")
        var bad = good
        bad.headers.add(name: "x-skip", value: "1")
        #expect(r.decide(bad, random: 0).forward?.routeName == "b", "withoutHeaders excludes")
        bad = good
        bad.headers.add(name: "x-skip", value: "2")
        #expect(r.decide(bad, random: 0).forward?.routeName == "a", "withoutHeaders with another value still matches")
        for change in [{ (r: inout RequestAttributes) in r.method = "GETX" }, { $0.port = 80 }, { $0.sourceLabels = ["app": "other"] },
                       { $0.path = "/x?name=ab" }, { $0.headers = HTTPHeaders() }] {
            var r2 = good
            change(&r2)
            #expect(r.decide(r2, random: 0).forward?.routeName == "b")
        }
    }

    @Test func redirectsDirectResponsesRewritesAndHeaderOps() throws {
        let r = try router(vs("""
          - match: [{uri: {prefix: /old}}]
            redirect: {uri: /new, authority: web2, port: 8443, scheme: https, redirectCode: 308}
          - match: [{uri: {exact: /healthz}}]
            directResponse: {status: 204}
          - match: [{uri: {prefix: /api/v1}}]
            rewrite: {uri: /v1, authority: api.internal}
            headers: {request: {set: {X-Route: r}}, response: {remove: [Server]}}
            route: [{destination: {host: web}, headers: {request: {add: {x-dest: d}}}}]
            mirror: {host: shadow}
          - match: [{uri: {exact: /exact}}]
            rewrite: {uri: /replaced}
            route: [{destination: {host: web}}]
        """))
        #expect(r.decide(req("/old/page?q=1"), random: 0) == .redirect(location: "https://web2:8443/new?q=1", status: 308))
        #expect(r.decide(req("/healthz"), random: 0) == .directResponse(status: 204, body: nil))
        let f = try #require(r.decide(req("/api/v1/users?x=y"), random: 0).forward)
        #expect(f.path == "/v1/users?x=y")
        #expect(f.authority == "api.internal")
        // Names in lower case, whatever the file's (the proxy compares them as bytes).
        #expect(f.requestHeaders.map(\.set) == [["x-route": "r"], [:]])
        #expect(f.requestHeaders.map(\.add) == [[:], ["x-dest": "d"]])
        #expect(f.responseHeaders.map(\.remove) == [["server"]])
        #expect(f.mirror?.host == "shadow.default.svc.cluster.local" && f.mirrorPercentage == 100)
        #expect(r.decide(req("/exact?keep=1"), random: 0).forward?.path == "/replaced?keep=1")
    }

    @Test func firstMatchingRouteWinsAndTimeoutsRetriesFaultsCarryOver() throws {
        let r = try router(vs("""
          - match: [{method: {exact: POST}}]
            route: [{destination: {host: writes}}]
            timeout: 3s
            retries: {attempts: 2, perTryTimeout: 1s, retryOn: "5xx,reset"}
            fault: {abort: {httpStatus: 503, percentage: {value: 10}}}
          - route: [{destination: {host: reads}}]
        """))
        let post = try #require(r.decide(req("/", method: "POST"), random: 0.5).forward)
        #expect(post.destination.host == "writes.default.svc.cluster.local")
        #expect(post.timeout?.nanoseconds == 3_000_000_000)
        #expect(post.retries?.retryOn == ["5xx", "reset"] && post.retries?.attempts == 2)
        #expect(post.fault?.abort?.httpStatus == 503 && post.fault?.abort?.percentage == 10)
        #expect(r.decide(req("/"), random: 0.5).forward?.destination.host == "reads.default.svc.cluster.local")
    }
}
