import Yams

/// Decoding context shared by the readers of one document: file, resource label, sink.
final class DecodeContext {
    let file: String
    let sink: DiagnosticSink
    /// `Kind ns/name`, once metadata has been read.
    var resource: String?

    init(file: String, sink: DiagnosticSink) {
        self.file = file
        self.sink = sink
    }

    func position(_ node: Node?) -> SourcePosition {
        let m = node?.mark
        return SourcePosition(file: file, line: m?.line ?? 1, column: m?.column ?? 1)
    }

    func error(_ code: String, _ node: Node?, _ message: String) {
        sink.error(code, position(node), resource, message)
    }

    func warning(_ code: String, _ node: Node?, _ message: String) {
        sink.warning(code, position(node), resource, message)
    }
}

/// One YAML node with its path (`spec.ports[0].number`) for messages. Every accessor
/// reports a type mismatch itself and returns nil, so decoding continues and every
/// problem in a file is reported, not just the first.
struct YNode {
    let node: Node
    let path: String
    let ctx: DecodeContext

    var position: SourcePosition { ctx.position(node) }

    private func typeError(_ want: String) {
        let got: String
        switch node {
        case .mapping: got = "a mapping"
        case .sequence: got = "a list"
        case .scalar(let s): got = s.string.isEmpty || s.string == "~" || s.string == "null" ? "nothing" : "\"\(s.string)\""
        case .alias: got = "an alias"
        }
        ctx.error("TYP001", node, "\(path) must be \(want) (got \(got))")
    }

    private var plainScalar: String? {
        if case .scalar(let s) = node, s.style == .plain || s.style == .any { return s.string }
        return nil
    }

    /// The scalar's text, whatever its type, with no error recorded (a check on a value
    /// whose type is judged elsewhere).
    var scalarText: String? {
        if case .scalar(let s) = node { return s.string }
        return nil
    }

    func string() -> String? {
        guard case .scalar(let s) = node else { typeError("a string"); return nil }
        if (s.style == .plain || s.style == .any) && ["", "~", "null", "Null", "NULL"].contains(s.string) {
            typeError("a string")
            return nil
        }
        return s.string
    }

    func int(in range: ClosedRange<Int>, what: String = "an integer") -> Int? {
        guard let text = plainScalar, let v = Int(text) else { typeError(what); return nil }
        guard range.contains(v) else {
            ctx.error("VAL001", node, "\(path) must be in \(range.lowerBound)..\(range.upperBound) (got \(v))")
            return nil
        }
        return v
    }

    func bool() -> Bool? {
        switch plainScalar {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: typeError("true or false"); return nil
        }
    }

    func mapping() -> YMap? {
        guard case .mapping(let m) = node else { typeError("a mapping"); return nil }
        return YMap(mapping: m, node: node, path: path, ctx: ctx)
    }

    func sequence() -> [YNode]? {
        guard case .sequence(let s) = node else { typeError("a list"); return nil }
        return s.enumerated().map { YNode(node: $0.element, path: "\(path)[\($0.offset)]", ctx: ctx) }
    }

    func stringList() -> [String]? {
        sequence()?.compactMap { $0.string() }
    }

    /// A map of string → string (labels, annotations).
    func stringMap() -> [String: String]? {
        guard let m = mapping() else { return nil }
        var out: [String: String] = [:]
        for (k, v) in m.allPairs() { if let s = v.string() { out[k] = s } }
        return out
    }
}

/// A YAML mapping whose keys are consumed as they are read; `finish` reports the rest.
final class YMap {
    let mapping: Node.Mapping
    let node: Node
    let path: String
    let ctx: DecodeContext
    private var used = Set<String>()
    /// Key text → value, built once (Yams checked that keys are unique).
    private let index: [String: Node]

    init(mapping: Node.Mapping, node: Node, path: String, ctx: DecodeContext) {
        self.mapping = mapping
        self.node = node
        self.path = path
        self.ctx = ctx
        var index: [String: Node] = [:]
        for (k, v) in mapping { index[Self.text(k)] = v }
        self.index = index
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The value under `key`, marking the key as understood.
    subscript(_ key: String) -> YNode? {
        used.insert(key)
        return index[key].map { YNode(node: $0, path: child(key), ctx: ctx) }
    }

    /// The value under `key`, or an error if it is missing.
    func required(_ key: String) -> YNode? {
        if let v = self[key] { return v }
        ctx.error("REQ001", node, "\(child(key)) is required")
        return nil
    }

    /// Every pair, all keys marked understood (for free-form maps such as labels).
    func allPairs() -> [(String, YNode)] {
        mapping.map { (k, v) in
            let key = Self.text(k)
            used.insert(key)
            return (key, YNode(node: v, path: "\(path)[\(key)]", ctx: ctx))
        }
    }

    static func text(_ key: Node) -> String { key.string ?? "\(key)" }

    /// Reports every key not read: Istio fields weft does not implement yet as such, and
    /// anything else as not a field at all (istioctl validate is just as strict).
    func finish(kind: String, istioFields: Set<String> = []) {
        for (k, _) in mapping where !used.contains(Self.text(k)) {
            let key = Self.text(k)
            if istioFields.contains(key) {
                ctx.error("FLD002", k, "\(child(key)) is not supported by weft yet; remove it (weft never ignores a field silently)")
            } else {
                ctx.error("FLD001", k, "\(child(key)) is not a field of \(kind)")
            }
        }
    }
}
