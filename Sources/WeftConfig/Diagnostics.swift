/// WeftConfig: the resource model (Istio kinds), YAML decoding with source positions,
/// validation, and immutable Snapshots. It depends on nothing else of weft's.
import Foundation

/// A place in a config file (1-based line and column, as editors count).
public struct SourcePosition: Hashable, Sendable, Codable, CustomStringConvertible {
    /// File path as given to the loader.
    public var file: String
    /// Line, from 1.
    public var line: Int
    /// Column, from 1.
    public var column: Int

    /// Creates a position.
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    /// `file:line:col`.
    public var description: String { "\(file):\(line):\(column)" }
}

/// One problem found in config: where, how bad, a stable code, and what is wrong.
public struct Diagnostic: Hashable, Sendable, Codable, CustomStringConvertible {
    /// Errors block a config; warnings are reported and the config still applies.
    public enum Severity: String, Sendable, Codable { case error, warning }

    /// Where the offending node starts.
    public var position: SourcePosition
    /// Error or warning.
    public var severity: Severity
    /// Stable code, e.g. `SE003`, for scripts and docs.
    public var code: String
    /// The resource the problem belongs to (`ServiceEntry default/reviews`), if known.
    public var resource: String?
    /// What is wrong and, where it helps, what to do.
    public var message: String
    /// The offending source line with a caret under the column (syntax errors), for
    /// terminals; logs keep to the one-line `description`.
    public var snippet: String?

    /// Creates a diagnostic.
    public init(_ severity: Severity, _ code: String, at position: SourcePosition, resource: String? = nil, _ message: String, snippet: String? = nil) {
        self.severity = severity
        self.code = code
        self.position = position
        self.resource = resource
        self.message = message
        self.snippet = snippet
    }

    /// `file:line:col: error [CODE] Kind ns/name: message` — one line, for logs and terminals.
    public var description: String {
        let res = resource.map { "\($0): " } ?? ""
        return "\(position): \(severity.rawValue) [\(code)] \(res)\(message)"
    }
}

/// Thrown when a config set has at least one error; carries every diagnostic found.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    /// All diagnostics (errors and warnings), in file order.
    public var diagnostics: [Diagnostic]

    /// Creates the error.
    public init(_ diagnostics: [Diagnostic]) { self.diagnostics = diagnostics }

    /// One diagnostic per line.
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// Collects diagnostics while decoding and validating.
final class DiagnosticSink {
    var items: [Diagnostic] = []
    var hasErrors: Bool { items.contains { $0.severity == .error } }

    func error(_ code: String, _ pos: SourcePosition, _ resource: String?, _ message: String) {
        items.append(Diagnostic(.error, code, at: pos, resource: resource, message))
    }

    func warning(_ code: String, _ pos: SourcePosition, _ resource: String?, _ message: String) {
        items.append(Diagnostic(.warning, code, at: pos, resource: resource, message))
    }
}
