import Foundation

/// What an authorization decision is made on: the verified peer, addresses, and — on an
/// HTTP port — the request (its path already normalized).
public struct AuthzRequest: Sendable {
    /// The peer's SPIFFE URI as verified by mTLS; nil for plaintext (then principals and
    /// namespaces match nothing, and their `not` forms match).
    public var identity: String?
    public var sourceIP: IPAddress?
    public var destinationIP: IPAddress?
    public var destinationPort: UInt16
    public var sni: String?
    /// nil on a plain TCP port.
    public var http: HTTP?

    public struct HTTP: Sendable {
        public var host: String
        public var method: String
        /// Normalized, without query or fragment.
        public var path: String
        public var headers: [(String, String)]

        public init(host: String, method: String, path: String, headers: [(String, String)]) {
            self.host = host
            self.method = method
            self.path = path
            self.headers = headers
        }
    }

    public init(identity: String?, sourceIP: IPAddress?, destinationIP: IPAddress?, destinationPort: UInt16, sni: String? = nil,
                http: HTTP?) {
        self.identity = identity
        self.sourceIP = sourceIP
        self.destinationIP = destinationIP
        self.destinationPort = destinationPort
        self.sni = sni
        self.http = http
    }

    /// `trust-domain/ns/N/sa/S`: how principals are written in policies.
    var principal: String? {
        identity.map { $0.hasPrefix("spiffe://") ? String($0.dropFirst("spiffe://".count)) : $0 }
    }

    var namespace: String? {
        guard let p = principal else { return nil }
        let parts = p.split(separator: "/", omittingEmptySubsequences: false)
        return parts.count == 5 && parts[1] == "ns" && parts[3] == "sa" ? String(parts[2]) : nil
    }
}

/// The outcome, with what decided it (for logs and `weft authz check`).
public struct AuthzDecision: Sendable, CustomStringConvertible {
    public var allowed: Bool
    /// The policy whose rule decided, if one did.
    public var policy: ResourceID?
    public var action: AuthorizationAction?
    public var rule: Int?
    /// AUDIT policies that matched (logged, never deciding).
    public var audited: [ResourceID] = []
    public var reason: String

    public var description: String { "\(allowed ? "ALLOW" : "DENY"): \(reason)" }
}

/// Istio's AuthorizationPolicy semantics over the policies that apply to one workload:
/// DENY first, then ALLOW (none → allowed; some, none matching → denied); AUDIT only logs.
public struct AuthorizationEngine: Sendable {
    public let policies: [AuthorizationPolicy]

    /// The policies of `snapshot` that apply to `workload`: those of its namespace without
    /// selector or with a matching one, and those of the snapshot's root namespace likewise
    /// (mesh-wide).
    public init(snapshot: Snapshot, workload: WorkloadEntry) {
        policies = snapshot.authorizationPolicies.filter { p in
            guard p.metadata.namespace == workload.metadata.namespace || p.metadata.namespace == snapshot.rootNamespace else { return false }
            return p.selector?.allSatisfy { workload.spec.labels[$0.key] == $0.value } ?? true
        }
    }

    public init(policies: [AuthorizationPolicy]) {
        self.policies = policies
    }

    public func evaluate(_ r: AuthzRequest) -> AuthzDecision {
        func id(_ p: AuthorizationPolicy) -> ResourceID { Resource.authorizationPolicy(p).id }
        var audited: [ResourceID] = []
        for p in policies where p.action == .audit {
            if matchingRule(p, r) != nil { audited.append(id(p)) }
        }
        for p in policies where p.action == .deny {
            if let i = matchingRule(p, r) {
                return AuthzDecision(allowed: false, policy: id(p), action: .deny, rule: i, audited: audited,
                                     reason: "DENY policy \(p.metadata.namespace)/\(p.metadata.name) rule \(i) matched")
            }
        }
        let allows = policies.filter { $0.action == .allow }
        if allows.isEmpty {
            return AuthzDecision(allowed: true, audited: audited, reason: "no ALLOW policy applies, and no DENY rule matched")
        }
        for p in allows {
            if let i = matchingRule(p, r) {
                return AuthzDecision(allowed: true, policy: id(p), action: .allow, rule: i, audited: audited,
                                     reason: "ALLOW policy \(p.metadata.namespace)/\(p.metadata.name) rule \(i) matched")
            }
        }
        let names = allows.map { "\($0.metadata.namespace)/\($0.metadata.name)" }.joined(separator: ", ")
        return AuthzDecision(allowed: false, audited: audited, reason: "ALLOW policies apply (\(names)) and none matched")
    }

    /// The index of the first rule of `p` that matches (no `rules` field: none ever does).
    func matchingRule(_ p: AuthorizationPolicy, _ r: AuthzRequest) -> Int? {
        p.rules?.firstIndex { matches($0, r, deny: p.action == .deny) }
    }

    /// On a plain TCP port a rule with HTTP-only fields never matches for ALLOW (it cannot
    /// be satisfied), while for DENY those fields are ignored, so the rule denies more,
    /// never less — Istio's rule.
    func matches(_ rule: AuthorizationRule, _ r: AuthzRequest, deny: Bool) -> Bool {
        if r.http == nil && Self.hasHTTPFields(rule) && !deny { return false }
        if !rule.from.isEmpty && !rule.from.contains(where: { source($0, r) }) { return false }
        if !rule.to.isEmpty && !rule.to.contains(where: { operation($0, r) }) { return false }
        return rule.when.allSatisfy { condition($0, r) }
    }

    static func hasHTTPFields(_ rule: AuthorizationRule) -> Bool {
        rule.to.contains { o in o.hosts != nil || o.notHosts != nil || o.methods != nil || o.notMethods != nil || o.paths != nil || o.notPaths != nil }
            || rule.when.contains { $0.key.hasPrefix("request.headers[") }
    }

    func source(_ s: AuthorizationSource, _ r: AuthzRequest) -> Bool {
        field(s.principals, s.notPrincipals, r.principal.map { [$0] } ?? [], match: Self.glob)
            && field(s.namespaces, s.notNamespaces, r.namespace.map { [$0] } ?? [], match: Self.glob)
            && field(s.ipBlocks, s.notIpBlocks, r.sourceIP.map { [$0.description] } ?? [], match: Self.cidr)
    }

    func operation(_ o: AuthorizationOperation, _ r: AuthzRequest) -> Bool {
        guard field(o.ports, o.notPorts, [String(r.destinationPort)], match: ==) else { return false }
        guard let h = r.http else { return true } // HTTP-only fields: see matches()
        return field(o.hosts, o.notHosts, [h.host], match: Self.host)
            && field(o.methods, o.notMethods, [h.method], match: Self.glob)
            && field(o.paths, o.notPaths, [Self.withoutParameters(h.path)], match: Self.glob)
    }

    func condition(_ c: AuthorizationCondition, _ r: AuthzRequest) -> Bool {
        let values: [String]
        var match: (String, String) -> Bool = Self.glob
        switch c.key {
        case "source.ip":
            values = r.sourceIP.map { [$0.description] } ?? []
            match = Self.cidr
        case "destination.ip":
            values = r.destinationIP.map { [$0.description] } ?? []
            match = Self.cidr
        case "source.principal": values = r.principal.map { [$0] } ?? []
        case "source.namespace": values = r.namespace.map { [$0] } ?? []
        case "destination.port": values = [String(r.destinationPort)]
        case "connection.sni": values = r.sni.map { [$0] } ?? []
        default:
            guard c.key.hasPrefix("request.headers["), c.key.hasSuffix("]") else { return false }
            guard let h = r.http else { return true } // DENY on TCP: ignored (see matches())
            let name = c.key.dropFirst("request.headers[".count).dropLast().lowercased()
            values = h.headers.filter { $0.0.lowercased() == name }.map(\.1)
        }
        return field(c.values, c.notValues, values, match: match)
    }

    /// A field with its `not` form: some value matches the list (if given), and none
    /// matches the `not` list (if given). No value (e.g. no identity) matches no list.
    func field(_ list: [String]?, _ notList: [String]?, _ values: [String], match: (String, String) -> Bool) -> Bool {
        if let l = list, !values.contains(where: { v in l.contains { match($0, v) } }) { return false }
        if let n = notList, values.contains(where: { v in n.contains { match($0, v) } }) { return false }
        return true
    }

    /// Istio's string match: exact, `*` (any non-empty), `prefix*`, `*suffix` — on bytes,
    /// as Envoy compares. Swift's String comparison goes by grapheme cluster and
    /// canonical equivalence: `/admin/` followed by a combining mark would not start with
    /// `/admin/` (a DENY of `/admin/*` passed by), and `é` would equal `e` + U+0301.
    static func glob(_ pattern: String, _ value: String) -> Bool {
        let p = pattern.utf8, v = value.utf8, star = UInt8(ascii: "*")
        if p.count == 1 && p.first == star { return !v.isEmpty }
        if p.last == star { return v.starts(with: p.dropLast()) }
        if p.first == star {
            let suffix = p.dropFirst()
            return v.count >= suffix.count && v.suffix(suffix.count).elementsEqual(suffix)
        }
        return p.elementsEqual(v)
    }

    /// Hosts compare case-insensitively, with or without the port, and without a
    /// trailing dot (`web.example.` is the same name as `web.example` to DNS and to every
    /// server, so a policy naming one holds for the other).
    static func host(_ pattern: String, _ value: String) -> Bool {
        func bare(_ h: String) -> String { h.utf8.last == UInt8(ascii: ".") ? String(decoding: h.utf8.dropLast(), as: UTF8.self) : h }
        let v = value.lowercased(), p = bare(pattern.lowercased())
        if glob(p, bare(v)) { return true }
        if let colon = v.lastIndex(of: ":"), !v.hasSuffix("]"), UInt16(v[v.index(after: colon)...]) != nil {
            return glob(p, bare(String(v[..<colon])))
        }
        return false
    }

    /// A path as policy paths are matched against it: each segment without its `;`
    /// parameters (RFC 3986 §3.3), as servers such as Tomcat and Spring read
    /// `/admin;jsessionid=1` — the resource `/admin`, which a DENY of `/admin` must hold
    /// for.
    static func withoutParameters(_ path: String) -> String {
        // Bytes again: `;` followed by a combining mark is not the Character ";".
        let semicolon = UInt8(ascii: ";"), slash = UInt8(ascii: "/")
        guard path.utf8.contains(semicolon) else { return path }
        var out: [UInt8] = []
        var inParameters = false
        for b in path.utf8 {
            if b == slash {
                inParameters = false
                out.append(b)
            } else if b == semicolon {
                inParameters = true
            } else if !inParameters {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// An address against an address or CIDR range.
    static func cidr(_ pattern: String, _ value: String) -> Bool {
        guard let addr = IPAddress(value) else { return false }
        let parts = pattern.split(separator: "/", maxSplits: 1)
        guard let net = IPAddress(String(parts[0])), net.family == addr.family else { return false }
        let width = net.family == 4 ? 32 : 128
        let bits = parts.count == 2 ? Int(parts[1]) ?? -1 : width
        guard (0...width).contains(bits) else { return false }
        for i in 0..<(bits / 8) where net.bytes[i] != addr.bytes[i] { return false }
        let rest = bits % 8
        if rest > 0 {
            let mask = UInt8(0xff) << (8 - rest)
            if net.bytes[bits / 8] & mask != addr.bytes[bits / 8] & mask { return false }
        }
        return true
    }
}

/// Istio's DECODE_AND_MERGE_SLASHES path normalization, applied before authorization; the
/// workload receives the normalized path, so what was authorized is what it serves.
public enum PathNormalizer {
    /// The normalized path and query (query untouched), or nil for a path that must be
    /// refused (400): an encoded NUL, control characters, not starting with `/`, a dot
    /// segment with parameters.
    ///
    /// It works on the target's bytes, never on Swift Characters: a slash, backslash, `?` or
    /// `#` followed by a combining mark is one Character to Swift but the same delimiter
    /// to every server, so Character-wise matching would leave a query in the path (and
    /// a DENY of `/admin` unmatched by `/admin?\u{301}`) or a backslash unconverted.
    public static func normalize(_ target: String) -> (path: String, query: String?)? {
        let slash = UInt8(ascii: "/"), backslash = UInt8(ascii: "\\"), dot = UInt8(ascii: "."), semicolon = UInt8(ascii: ";")
        var t = Array(target.utf8)[...]
        if let hash = t.firstIndex(of: UInt8(ascii: "#")) { t = t[..<hash] } // a fragment never reaches a server
        var query: String?
        if let q = t.firstIndex(of: UInt8(ascii: "?")) {
            query = String(decoding: t[(q + 1)...], as: UTF8.self)
            t = t[..<q]
        }
        guard let first = t.first, first == slash || first == backslash || startsWithEscape(t, of: slash) || startsWithEscape(t, of: backslash)
        else { return nil }
        // Percent-decoding: unreserved characters (RFC 3986 normalization) and, as
        // DECODE_AND_MERGE_SLASHES adds, %2F and %5C; anything else stays encoded.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(t.count)
        var i = t.startIndex
        while i < t.endIndex {
            let c = t[i]
            if c < 0x20 || c == 0x7f { return nil }
            if c == UInt8(ascii: "%") {
                guard i + 2 < t.endIndex, let hi = hexValue(t[i + 1]), let lo = hexValue(t[i + 2]) else { return nil }
                let v = hi << 4 | lo
                if v < 0x20 || v == 0x7f { return nil }
                let unreserved = (v >= 0x41 && v <= 0x5a) || (v >= 0x61 && v <= 0x7a) || (v >= 0x30 && v <= 0x39)
                    || v == UInt8(ascii: "-") || v == dot || v == UInt8(ascii: "_") || v == UInt8(ascii: "~")
                if unreserved || v == slash || v == backslash {
                    bytes.append(v)
                } else {
                    // Keep the escape, upper-cased hex as RFC 3986 §6.2.2.1 says.
                    bytes += [UInt8(ascii: "%"), upperHex(hi), upperHex(lo)]
                }
                i += 3
                continue
            }
            bytes.append(c)
            i += 1
        }
        // Backslashes are slashes (as browsers and Envoy treat them), then slashes merge.
        for j in bytes.indices where bytes[j] == backslash { bytes[j] = slash }
        var out: [ArraySlice<UInt8>] = []
        for s in bytes.split(separator: slash, omittingEmptySubsequences: true) {
            // A dot segment with parameters (`..;x`) is a dot segment to servers that drop
            // parameters first (Tomcat: `/public/..;/admin` is `/admin`), and a name to
            // the others: no one reading of it is safe, so it is refused.
            if s.starts(with: [dot, semicolon]) || s.starts(with: [dot, dot, semicolon]) { return nil }
            if s.elementsEqual([dot]) { continue }
            if s.elementsEqual([dot, dot]) {
                if !out.isEmpty { out.removeLast() }
                continue
            }
            out.append(s)
        }
        var result: [UInt8] = [slash]
        for (n, s) in out.enumerated() {
            if n > 0 { result.append(slash) }
            result += s
        }
        let last = bytes.split(separator: slash, omittingEmptySubsequences: false).last
        let endsAsDirectory = bytes.last == slash || last.map { $0.elementsEqual([dot]) || $0.elementsEqual([dot, dot]) } == true
        if endsAsDirectory, result.count > 1 { result.append(slash) }
        return (String(decoding: result, as: UTF8.self), query)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func upperHex(_ v: UInt8) -> UInt8 { v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "A") + v - 10 }

    /// Whether `t` starts with the percent-escape of `byte` (either case of hex).
    private static func startsWithEscape(_ t: ArraySlice<UInt8>, of byte: UInt8) -> Bool {
        guard t.count >= 3, t[t.startIndex] == UInt8(ascii: "%"), let hi = hexValue(t[t.startIndex + 1]),
              let lo = hexValue(t[t.startIndex + 2]) else { return false }
        return hi << 4 | lo == byte
    }
}
