import Foundation
import PropertyBased
import Testing
@testable import WeftConfig

/// Random resources survive decode → stored YAML (what revisions persist and `weft get`
/// shows) → decode unchanged. Positions differ by construction and are left out.
@Suite struct RoundTripTests {
    /// splitmix64: the random resource is a pure function of the generated seed, so a
    /// failing seed reproduces exactly.
    struct SplitMix {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        mutating func int(_ r: ClosedRange<Int>) -> Int { r.lowerBound + Int(next() % UInt64(r.count)) }
        mutating func pick<T>(_ xs: [T]) -> T { xs[int(0...xs.count - 1)] }
        mutating func bool() -> Bool { next() & 1 == 1 }
    }

    /// Strings a YAML emitter must quote to keep them strings.
    static let tricky = ["true", "no", "null", "~", "010", "1e3", "0x1F", "-", "a: b", "#tag", "v1", "blue", "*", "[x]", "'q'", "\"dq\"", " lead", "ü"]

    static func quoted(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func labels(_ rng: inout SplitMix) -> String {
        let n = rng.int(0...3)
        return "{" + (0..<n).map { i in "k\(i): \(quoted(rng.pick(tricky)))" }.joined(separator: ", ") + "}"
    }

    static func randomYAML(_ rng: inout SplitMix) -> String {
        let name = "r\(rng.int(0...9999))"
        var docs: [String] = []
        let ports = (0..<rng.int(1...3)).map { i in "{number: \(1000 + i), name: p\(i), protocol: \(rng.pick(["TCP", "HTTP", "GRPC", "UDP"]))\(rng.bool() ? ", targetPort: \(rng.int(1...65535))" : "")}" }
        let endpoints = (0..<rng.int(0...4)).map { i in
            "{address: \"10.\(rng.int(0...255)).\(rng.int(0...255)).\(i + 1)\", weight: \(rng.int(1...1000)), labels: \(labels(&rng))}"
        }
        docs.append("""
        apiVersion: networking.istio.io/\(rng.pick(["v1", "v1beta1", "v1alpha3"]))
        kind: ServiceEntry
        metadata: {name: \(name), namespace: ns\(rng.int(0...3)), labels: \(labels(&rng))}
        spec:
          hosts: [\(name)]
          addresses: ["10.96.\(rng.int(0...255)).\(rng.int(1...254))"]
          ports: [\(ports.joined(separator: ", "))]
          resolution: STATIC
          endpoints: [\(endpoints.joined(separator: ", "))]
        """)
        let match = ["{uri: {prefix: \(quoted(rng.pick(tricky)))}}", "{headers: {x-h: {exact: \(quoted(rng.pick(tricky)))}}}",
                     "{method: {regex: \"GET|PUT\"}, ignoreUriCase: \(rng.bool())}", "{queryParams: {q: {regex: \"[a-z]+\"}}, port: \(rng.int(1...65535))}"]
        let w1 = rng.int(0...100)
        docs.append("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: \(name)}
        spec:
          hosts: [\(name)]
          http:
          - match: [\(rng.pick(match))]
            route:
            - {destination: {host: \(name)}, weight: \(w1), headers: {request: {set: {x-a: \(quoted(rng.pick(tricky)))}}}}
            - {destination: {host: \(name), port: {number: \(rng.int(1...65535))}}, weight: \(100 - w1 + 1)}
            timeout: \(rng.int(1...999))ms
            retries: {attempts: \(rng.int(0...9)), perTryTimeout: \(rng.int(1...9))s, retryOn: \(rng.pick(["5xx", "\"reset,503\"", "gateway-error"]))}
            fault: {abort: {httpStatus: \(rng.int(200...599)), percentage: {value: \(Double(rng.int(0...1000)) / 10)}}}
          - directResponse: {status: \(rng.int(200...599)), body: {string: \(quoted(rng.pick(tricky)))}}
        """)
        docs.append("""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: \(name)}
        spec:
          action: \(rng.pick(["ALLOW", "DENY", "AUDIT"]))
          rules:
          - from: [{source: {principals: [\(quoted(rng.pick(["a/b", "*", "x*", "*y"])))], ipBlocks: ["10.\(rng.int(0...255)).0.0/16"]}}]
            to: [{operation: {methods: [GET], paths: [\(quoted(rng.pick(["/a", "/b*", "*"])))], ports: ["\(rng.int(1...65535))"]}}]
            when: [{key: "request.headers[x-t]", values: [\(quoted(rng.pick(tricky)))]}]
        """)
        return docs.joined(separator: "\n---\n")
    }

    /// The resource as JSON without source positions.
    static func canonical(_ r: Resource) -> String {
        func strip(_ v: Any) -> Any {
            if let d = v as? [String: Any] { return d.filter { $0.key != "position" }.mapValues(strip) }
            if let a = v as? [Any] { return a.map(strip) }
            return v
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let obj = try! JSONSerialization.jsonObject(with: try! enc.encode(r))
        return String(decoding: try! JSONSerialization.data(withJSONObject: strip(obj), options: [.sortedKeys]), as: UTF8.self)
    }

    @Test func randomResourcesSurviveTheStoredForm() async {
        await propertyCheck(count: 200, input: Gen.uint64(in: 0...UInt64.max)) { seed in
            var rng = SplitMix(state: seed)
            let yaml = Self.randomYAML(&rng)
            let first = ConfigLoader.parse(text: yaml, file: "generated.yaml")
            #expect(!first.hasErrors, "seed \(seed): \(first.diagnostics.map(\.description))\n\(yaml)")
            #expect(first.documents.count == 3)
            for doc in first.documents {
                let again = ConfigLoader.parse(text: doc.yaml, file: "stored.yaml")
                #expect(!again.hasErrors, "seed \(seed): \(again.diagnostics.map(\.description))\n\(doc.yaml)")
                #expect(again.documents.map { Self.canonical($0.resource) } == [Self.canonical(doc.resource)], "seed \(seed)\n\(yaml)\n---stored---\n\(doc.yaml)")
                // And the stored form is a fixpoint.
                #expect(again.documents.first?.yaml == doc.yaml)
            }
        }
    }
}

@Suite struct ContentHashTests {
    static let web = """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: web, namespace: default}
        spec:
          hosts: [web.default.svc.cluster.local]
          addresses: [10.96.0.10]
          ports: [{number: 80, name: http, protocol: HTTP}]
          resolution: STATIC
          endpoints: [{address: 10.250.1.1}]
        """

    func hash(_ text: String, file: String) throws -> String {
        try ConfigLoader.snapshot(ConfigLoader.parse(text: text, file: file), revision: 1).contentHash
    }

    /// The same resources from another file, at other lines, with comments: the same hash
    /// (nodes of a cluster and the writer compare it); another value: another hash.
    @Test func followsTheContentNotWhereItWasRead() throws {
        let a = try hash(Self.web, file: "a.yaml")
        #expect(try hash("# moved\n\n" + Self.web, file: "elsewhere/b.yaml") == a)
        #expect(try hash(Self.web.replacingOccurrences(of: "10.250.1.1", with: "10.250.1.2"), file: "a.yaml") != a)
        let stored = try ConfigLoader.snapshot(ConfigLoader.parse(text: Self.web, file: "a.yaml"), revision: 1).documents.values.first!.yaml
        #expect(try hash(stored, file: "etcd weft/config/v1/ServiceEntry/default/web") == a)
    }
}
