import Foundation
import Yams

/// A duration as Istio writes it (`5s`, `100ms`, `1h30m`, `0.5s`), kept with its text.
public struct IstioDuration: Hashable, Sendable, Codable, CustomStringConvertible {
    /// As written.
    public var text: String
    /// Nanoseconds.
    public var nanoseconds: Int64

    /// Go/Istio duration syntax: one or more `<number><unit>`, units h m s ms us µs ns.
    public init?(_ text: String) {
        let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("µs", 1e3), ("ns", 1), ("h", 3600e9), ("m", 60e9), ("s", 1e9)]
        var rest = Substring(text)
        var total = 0.0
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            guard let (unit, scale) = units.first(where: { rest.hasPrefix($0.0) }) else { return nil }
            rest = rest.dropFirst(unit.count)
            total += value * scale
        }
        guard total < 9.2e18 else { return nil }
        self.text = text
        nanoseconds = Int64(total)
    }

    /// As written.
    public var description: String { text }
}

/// Istio's StringMatch: exactly one of exact, prefix, regex (RE2 syntax).
public enum StringMatch: Hashable, Sendable, Codable {
    case exact(String)
    case prefix(String)
    case regex(String)
}

/// Label selector (`selector.matchLabels` / `workloadSelector.labels`).
public typealias Labels = [String: String]

extension YNode {
    /// A duration, ≥ `minimum` (Istio requires ≥ 1ms for timeouts).
    func duration(code: String, minimumNanos: Int64 = 1_000_000) -> IstioDuration? {
        guard let s = string() else { return nil }
        guard let d = IstioDuration(s) else {
            ctx.error(code, node, "\(path) \"\(s)\" is not a duration (e.g. 5s, 100ms, 1h)")
            return nil
        }
        if d.nanoseconds < minimumNanos {
            ctx.error(code, node, "\(path) must be at least \(minimumNanos / 1_000_000)ms (got \(s))")
            return nil
        }
        return d
    }

    /// A number in 0...100.
    func percent(code: String) -> Double? {
        guard case .scalar(let s) = node, s.style == .plain || s.style == .any, let v = Double(s.string) else {
            ctx.error("TYP001", node, "\(path) must be a number")
            return nil
        }
        guard (0...100).contains(v) else {
            ctx.error(code, node, "\(path) must be in 0..100 (got \(s.string))")
            return nil
        }
        return v
    }

    /// `{exact|prefix|regex: …}`: exactly one; regexes must compile.
    func stringMatch(code: String) -> StringMatch? {
        guard let m = mapping() else { return nil }
        let exact = m["exact"]?.string(), prefix = m["prefix"]?.string(), regex = m["regex"]?.string()
        m.finish(kind: "StringMatch")
        let set = [exact, prefix, regex].compactMap { $0 }
        guard set.count == 1 else {
            ctx.error(code, node, "\(path) must set exactly one of exact, prefix, regex")
            return nil
        }
        if let exact { return .exact(exact) }
        if let prefix { return .prefix(prefix) }
        if let r = regex {
            if (try? NSRegularExpression(pattern: r)) == nil {
                ctx.error(code, m["regex"]?.node, "\(path).regex \"\(r)\" does not compile")
                return nil
            }
            return .regex(r)
        }
        return nil
    }

    /// A map of name → StringMatch (headers, queryParams).
    func stringMatchMap(code: String) -> [String: StringMatch]? {
        guard let m = mapping() else { return nil }
        var out: [String: StringMatch] = [:]
        for (k, v) in m.allPairs() { if let sm = v.stringMatch(code: code) { out[k] = sm } }
        return out
    }

    /// A list of strings where `*` may stand only at the start or the end (Istio's rule for
    /// AuthorizationPolicy values: exact, prefix `abc*`, suffix `*abc`, presence `*`).
    /// An empty list in an Istio policy is the field left out: proto3 cannot tell them
    /// apart, so Istio matches as if it were not there (`principals: []` matches any
    /// principal — a DENY so written denies all, an ALLOW allows all). weft does the same,
    /// and says so.
    func emptyListIsUnset() -> [String]? {
        ctx.warning("AP007", node, "\(path) is an empty list, which Istio reads as no \(path.split(separator: ".").last ?? "") field at all: this matches anything, not nothing")
        return nil
    }

    func wildcardList(code: String) -> [String]? {
        guard let items = sequence() else { return nil }
        if items.isEmpty { return emptyListIsUnset() }
        var out: [String] = []
        for item in items {
            guard let s = item.string() else { continue }
            let inner = s.count > 1 ? s.dropFirst().dropLast() : ""
            if inner.contains("*") || (s.count > 1 && s.hasPrefix("*") && s.hasSuffix("*")) {
                ctx.error(code, item.node, "\(item.path) \"\(s)\": a wildcard may only stand at the start or the end of a value")
                continue
            }
            out.append(s)
        }
        return out
    }

    /// A port number 1..65535.
    func port() -> UInt16? { int(in: 1...65535).map { UInt16($0) } }
}
