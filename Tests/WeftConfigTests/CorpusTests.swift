import Foundation
import Testing
import WeftConfig

/// Table-driven validation: every good file (and every shared example) validates without
/// error; every bad file yields exactly the errors its `# expect: CODE line:col` header names.
@Suite struct CorpusTests {
    static let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()

    static func files(_ dir: String) -> [String] {
        let url = here.appendingPathComponent("corpus/\(dir)")
        return ((try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []).filter { $0.hasSuffix(".yaml") }.sorted()
            .map { url.appendingPathComponent($0).path }
    }

    static func errors(_ path: String) -> [String] {
        do {
            _ = try ConfigLoader.snapshot(ConfigLoader.parse(paths: [path]), revision: 1)
            return []
        } catch {
            return error.diagnostics.filter { $0.severity == .error }.map { "\($0.code) \($0.position.line):\($0.position.column)" }
        }
    }

    @Test func corpusIsThere() {
        #expect(Self.files("good").count >= 2)
        #expect(Self.files("bad").count >= 30)
    }

    @Test(arguments: files("good") + [here.appendingPathComponent("../../../shared/examples").standardized.path])
    func goodFilesValidate(path: String) {
        #expect(Self.errors(path) == [], "\(path)")
    }

    @Test(arguments: files("bad"))
    func badFilesFailWithTheirCodeAndPosition(path: String) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let expected = text.split(separator: "\n").prefix { $0.hasPrefix("# expect: ") }.map { String($0.dropFirst("# expect: ".count)) }
        try #require(!expected.isEmpty, "\(path) has no # expect: line")
        #expect(Self.errors(path) == expected, "\(path)")
    }

    /// The message is the one line an operator reads: file:line:col, code, resource, path, value.
    @Test func errorMessagesNameFileResourceAndPath() throws {
        let path = Self.files("bad").first { $0.hasSuffix("negative-weight.yaml") }!
        var diagnostics: [Diagnostic] = []
        do { _ = try ConfigLoader.snapshot(ConfigLoader.parse(paths: [path]), revision: 1) } catch { diagnostics = error.diagnostics }
        #expect(diagnostics.first { $0.severity == .error }?.description.hasSuffix(
            "negative-weight.yaml:12:15: error [VS003] VirtualService default/reviews: spec.http[0].route[1].weight must be ≥ 0 (got -5)") == true,
            "\(diagnostics)")
    }
}
