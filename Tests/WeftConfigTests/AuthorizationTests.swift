import Foundation
import Testing
@testable import WeftConfig

private func engine(_ yaml: String, workloadLabels: [String: String] = ["app": "web"]) throws -> AuthorizationEngine {
    let we = """
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: web, namespace: default}
    spec: {address: 10.0.0.1, labels: \(workloadLabels.isEmpty ? "{}" : "{" + workloadLabels.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}")}
    ---

    """
    let snap = try load(we + yaml).get()
    return AuthorizationEngine(snapshot: snap, workload: snap.workloadEntries[0])
}

private let examplesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../../shared/examples").standardized.path

private let frontend = "spiffe://cluster.local/ns/default/sa/frontend"
private let other = "spiffe://cluster.local/ns/shop/sa/cart"

private func http(_ id: String?, _ method: String = "GET", _ path: String = "/", host: String = "web", port: UInt16 = 8080,
                  headers: [(String, String)] = [], ip: String = "10.1.1.1") -> AuthzRequest {
    AuthzRequest(identity: id, sourceIP: IPAddress(ip), destinationIP: IPAddress("10.0.0.1"), destinationPort: port,
                 http: .init(host: host, method: method, path: path, headers: headers))
}

private func tcp(_ id: String?, port: UInt16 = 9000) -> AuthzRequest {
    AuthzRequest(identity: id, sourceIP: IPAddress("10.1.1.1"), destinationIP: IPAddress("10.0.0.1"), destinationPort: port, http: nil)
}

@Suite struct AuthorizationTests {
    @Test func theExampleAllowsGETFromFrontendOnly() throws {
        let e = try engine(String(contentsOfFile: examplesDir + "/authz-allow-read.yaml", encoding: .utf8))
        #expect(e.evaluate(http(frontend)).allowed)
        #expect(!e.evaluate(http(frontend, "POST")).allowed)
        #expect(!e.evaluate(http(other)).allowed)
        // Plaintext: no identity, so the principal cannot match.
        #expect(!e.evaluate(http(nil)).allowed)
        #expect(e.evaluate(http(frontend)).reason.contains("default/allow-read rule 0"))
    }

    @Test func denyComesFirstAndNoAllowMeansAllowed() throws {
        let e = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-admin, namespace: default}
        spec:
          action: DENY
          rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
        """)
        #expect(e.evaluate(http(frontend, "GET", "/")).allowed)
        #expect(!e.evaluate(http(frontend, "GET", "/admin")).allowed)
        #expect(!e.evaluate(http(frontend, "GET", "/admin/x")).allowed)
        #expect(e.evaluate(http(frontend, "GET", "/ADMIN")).allowed) // paths are case-sensitive, as in Istio
        // On a plain TCP port the HTTP-only rule denies everything.
        #expect(!e.evaluate(tcp(frontend)).allowed)
    }

    @Test func allowRulesWithHTTPFieldsNeverMatchTCP() throws {
        let e = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: a, namespace: default}
        spec:
          rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}], to: [{operation: {methods: [GET]}}]}]
        """)
        #expect(!e.evaluate(tcp(frontend)).allowed)
        #expect(e.evaluate(http(frontend)).allowed)
    }

    @Test func noRulesDeniesAllAndAnEmptyRuleAllowsAll() throws {
        let none = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: a, namespace: default}
        spec: {}
        """)
        #expect(!none.evaluate(http(frontend)).allowed)
        let all = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: a, namespace: default}
        spec: {rules: [{}]}
        """)
        #expect(all.evaluate(http(nil)).allowed && all.evaluate(tcp(nil)).allowed)
    }

    @Test func sourcesNotFieldsConditionsAndScope() throws {
        let e = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-outsiders, namespace: weft-system}
        spec:
          selector: {matchLabels: {app: web}}
          action: DENY
          rules: [{from: [{source: {notNamespaces: [default]}}]}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: other-workload, namespace: default}
        spec:
          selector: {matchLabels: {app: db}}
          action: DENY
          rules: [{}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow, namespace: default}
        spec:
          rules:
          - from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]
            when: [{key: "request.headers[x-token]", values: ["s3cr*"]}, {key: destination.port, values: ["8080"]}]
        """)
        #expect(e.policies.map(\.metadata.name).sorted() == ["allow", "deny-outsiders"])
        // A mesh-wide DENY for anyone outside namespace default: a plaintext peer has no
        // namespace, so notNamespaces matches it.
        #expect(!e.evaluate(http(other, headers: [("x-token", "s3cret")])).allowed)
        #expect(!e.evaluate(http(nil, headers: [("x-token", "s3cret")])).allowed)
        #expect(e.evaluate(http(frontend, headers: [("X-Token", "s3cret")])).allowed)
        #expect(!e.evaluate(http(frontend, headers: [("x-token", "nope")])).allowed)
        #expect(!e.evaluate(http(frontend, headers: [("x-token", "s3cret")], ip: "10.2.0.1")).allowed)
        #expect(!e.evaluate(http(frontend, port: 9090, headers: [("x-token", "s3cret")])).allowed)
    }

    @Test func auditNeverDecides() throws {
        let e = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: watch, namespace: default}
        spec: {action: AUDIT, rules: [{}]}
        """)
        let d = e.evaluate(http(nil))
        #expect(d.allowed && d.audited.map(\.name) == ["watch"])
    }

    @Test func hostsAreCaseInsensitiveWithOrWithoutPort() throws {
        let e = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: a, namespace: default}
        spec: {rules: [{to: [{operation: {hosts: ["web.default.svc.cluster.local", "*.example.com"]}}]}]}
        """)
        #expect(e.evaluate(http(nil, host: "WEB.default.svc.cluster.local:80")).allowed)
        #expect(e.evaluate(http(nil, host: "api.Example.com")).allowed)
        #expect(!e.evaluate(http(nil, host: "web.default.svc.cluster.local.evil")).allowed)
        // A trailing dot names the same host, with or without the port.
        #expect(e.evaluate(http(nil, host: "web.default.svc.cluster.local.")).allowed)
        #expect(e.evaluate(http(nil, host: "web.default.svc.cluster.local.:80")).allowed)
        #expect(e.evaluate(http(nil, host: "api.example.com.")).allowed)
    }

    /// Paths are matched without their `;` parameters, as Tomcat and Spring serve them.
    @Test func pathParametersDoNotHideAPathFromPolicy() throws {
        let e = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: a, namespace: default}
        spec: {action: DENY, rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]}
        """)
        #expect(!e.evaluate(http(nil, "GET", "/admin;jsessionid=1")).allowed)
        #expect(!e.evaluate(http(nil, "GET", "/admin/x;y/z")).allowed)
        #expect(e.evaluate(http(nil, "GET", "/public;v=1/x")).allowed)
        #expect(AuthorizationEngine.withoutParameters("/a;x/b;y=1;z/c") == "/a/b/c")
    }

    /// Istio reads an empty list as the field left out (proto3): a DENY written with
    /// `principals: []` denies everyone, and validation says so.
    @Test func anEmptyListIsNoField() throws {
        let policy = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: a, namespace: default}
        spec: {action: DENY, rules: [{from: [{source: {principals: [], ipBlocks: []}}], to: [{operation: {paths: ["/x"], methods: []}}]}]}
        """
        let e = try engine(policy)
        #expect(!e.evaluate(http(frontend, "GET", "/x")).allowed)
        #expect(!e.evaluate(http(nil, "POST", "/x")).allowed)
        #expect(e.evaluate(http(frontend, "GET", "/y")).allowed)
        let snap = try load(policy).get()
        #expect(snap.warnings.filter { $0.code == "AP007" }.count == 3)
    }

    /// Istio's normalization corpus against a DENY of /admin: every spelling lands on
    /// /admin (denied) or is refused; none reaches the workload as something else that
    /// its server would read as /admin.
    @Test func pathNormalizationCorpus() {
        let cases: [(String, String?)] = [
            ("/admin", "/admin"), ("/app/%2E./admin", "/admin"), ("/%2Fadmin", "/admin"), ("//admin", "/admin"),
            ("/./admin", "/admin"), ("/app/../admin", "/admin"), ("/%2e%2e/admin", "/admin"), ("/%61dmin", "/admin"),
            ("\\admin", "/admin"), ("/%5Cadmin", "/admin"), ("/%5cadmin", "/admin"), ("/admin#x", "/admin"),
            ("/a/b/../../admin", "/admin"), ("/../admin", "/admin"), ("///admin", "/admin"), ("/admin%00", nil),
            ("/admin%00.html", nil), ("/%00", nil), ("/admin\u{01}", nil), ("admin", nil), ("/admin/", "/admin/"),
            ("/ADMIN", "/ADMIN"), ("/a%20b", "/a%20b"), ("/a%7e", "/a~"), ("/x%2f..%2fadmin", "/admin"),
            // A dot segment with parameters is a dot segment to some servers, a name to
            // others: refused.
            ("/public/..;/admin", nil), ("/public/.;x/admin", nil), ("/public/%2e%2e;/admin", nil), ("/a;b/c", "/a;b/c"),
        ]
        for (input, want) in cases {
            #expect(PathNormalizer.normalize(input)?.path == want, "\(input)")
        }
        #expect(PathNormalizer.normalize("/admin?x=1#y")! == ("/admin", "x=1"))
    }
}

/// Delimiters followed by a combining mark: one Character to Swift, still the delimiter
/// to every server. Found by fuzz-path (a backslash survived normalization as `\` +
/// U+0487); each of these was a way past a DENY before the normalizer and the matchers
/// worked on bytes.
@Suite struct CombiningMarkTests {
    @Test func delimitersAreBytesToTheNormalizer() throws {
        #expect(PathNormalizer.normalize("/admin?\u{301}x")! == ("/admin", "\u{301}x"))
        #expect(PathNormalizer.normalize("/admin#\u{301}")?.path == "/admin")
        #expect(PathNormalizer.normalize("/x/%5C\u{487}/../admin")?.path == "/x/admin")
        #expect(PathNormalizer.normalize("/secret/\u{301}/../../admin")?.path == "/admin")
        #expect(PathNormalizer.normalize("/\u{301}admin")?.path == "/\u{301}admin")
        // The fuzzer's input, whole.
        let crash = "/%2e%2e//q///*`/4/x/\u{FFFD}d\u{FFFD}/.\u{FFFD}//%5c./././\u{FFFD}d\u{FFFD}/.%5c.%5c0/./\u{FFFD}d\u{FFFD}/."
            + "\u{FFFD}//*`/4/x.f`/.%5c.%5c.`/.%5c.%5c././\u{FFFD}d\u{FFFD}/.\u{FFFD}`//.%5c\u{487}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}5cd\u{FFFD}ini/6"
        let path = try #require(PathNormalizer.normalize(crash)?.path)
        #expect(!path.utf8.contains(UInt8(ascii: "\\")), "\(path)")
    }

    @Test func matchersCompareBytes() throws {
        #expect(AuthorizationEngine.glob("/admin/*", "/admin/\u{301}"))
        #expect(AuthorizationEngine.glob("*.html", "/a\u{301}.html"))
        #expect(!AuthorizationEngine.glob("/caf\u{E9}", "/cafe\u{301}"), "canonically equivalent is not the same bytes")
        #expect(AuthorizationEngine.withoutParameters("/admin;\u{301}x") == "/admin")
        let deny = try engine("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-admin, namespace: default}
        spec:
          action: DENY
          rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
        """)
        for target in ["/admin/\u{301}", "/admin;\u{301}x", "/admin?\u{301}", "/x/%5C\u{487}/../../admin"] {
            let (path, _) = try #require(PathNormalizer.normalize(target))
            let r = AuthzRequest(identity: nil, sourceIP: nil, destinationIP: nil, destinationPort: 80,
                                 http: .init(host: "web", method: "GET", path: path, headers: []))
            #expect(!deny.evaluate(r).allowed, "\(target.debugDescription) → \(path.debugDescription)")
        }
    }
}
