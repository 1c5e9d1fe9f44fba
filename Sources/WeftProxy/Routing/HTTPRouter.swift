/// WeftProxy: the L7 data path — request routing decisions (this file), and, as it grows,
/// the protocol handlers and upstream pools that act on them.
import Foundation
import NIOHTTP1
import WeftConfig

/// What the router needs to know about a request; header names are lowercase.
public struct RequestAttributes: Sendable {
    public var method: String
    /// `:path` as received, query string included.
    public var path: String
    public var authority: String
    /// The request's headers (names match case-insensitively).
    public var headers: HTTPHeaders
    /// The service port the client dialed.
    public var port: UInt16
    /// Labels of the client's workload (known from its cgroup, never from the request).
    public var sourceLabels: Labels

    public init(method: String, path: String, authority: String, headers: [(name: String, value: String)] = [],
                port: UInt16, sourceLabels: Labels = [:]) {
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = HTTPHeaders(headers.map { ($0.name, $0.value) })
        self.port = port
        self.sourceLabels = sourceLabels
    }

    /// A request's attributes over its own headers (no copy of them).
    public init(method: String, path: String, authority: String, headers: HTTPHeaders, port: UInt16, sourceLabels: Labels = [:]) {
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers
        self.port = port
        self.sourceLabels = sourceLabels
    }

    /// Values of one header joined with "," (how Envoy matches repeated headers).
    func header(_ name: String) -> String? {
        let values = headers[name]
        return values.isEmpty ? nil : values.count == 1 ? values[0] : values.joined(separator: ",")
    }

    var pathWithoutQuery: Substring { path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }

    /// First value of a query parameter, percent-decoded.
    func queryParam(_ name: String) -> String? {
        guard let q = path.firstIndex(of: "?") else { return nil }
        for pair in path[path.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(kv[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[0])
            if key == name {
                let raw = kv.count > 1 ? String(kv[1]) : ""
                return raw.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? raw
            }
        }
        return nil
    }
}

/// A request bound for a destination, with everything the route says to do on the way.
public struct ForwardDecision: Sendable, Equatable {
    public var destination: Destination
    /// Index of the http[] entry that matched (for stats and logs).
    public var routeIndex: Int
    public var routeName: String?
    /// The path to send upstream (after rewrite).
    public var path: String
    /// The authority to send upstream (after rewrite).
    public var authority: String
    public var timeout: IstioDuration?
    public var retries: HTTPRetry?
    public var fault: HTTPFault?
    public var mirror: Destination?
    public var mirrorPercentage: Double?
    /// Header operations in the order to apply them: route level, then destination level.
    public var requestHeaders: [HeaderOperations]
    public var responseHeaders: [HeaderOperations]
}

/// What to do with a request.
public enum RouteDecision: Sendable, Equatable {
    case forward(ForwardDecision)
    case redirect(location: String, status: Int)
    case directResponse(status: Int, body: String?)
    /// No route matched: Envoy answers 404 with response flag NR.
    case noRoute
}

/// The routing decision of one VirtualService's http[] routes, in order: the first route
/// with a matching match block wins (no match block matches everything).
public struct HTTPRouter: Sendable {
    public let routes: [HTTPRoute]
    /// Regexes compiled once; keyed by pattern.
    private let regexes: [String: NSRegularExpression]
    /// Per route and destination, the header operations to apply (route level, then the
    /// destination's), built once: decide runs for every request.
    private let operations: [[(request: [HeaderOperations], response: [HeaderOperations])]]

    public init(routes: [HTTPRoute]) {
        self.routes = routes
        operations = routes.map { route in
            route.route.map { d in (Self.operations(route.headers?.request, d.headers?.request),
                                    Self.operations(route.headers?.response, d.headers?.response)) }
        }
        var patterns = Set<String>()
        func add(_ m: StringMatch?) { if case .regex(let r)? = m { patterns.insert(r) } }
        for route in routes {
            for m in route.match {
                add(m.uri); add(m.authority); add(m.method)
                for v in m.headers.values { add(v) }
                for v in m.withoutHeaders.values { add(v) }
                for v in m.queryParams.values { add(v) }
            }
        }
        var compiled: [String: NSRegularExpression] = [:]
        for p in patterns { compiled[p] = try? NSRegularExpression(pattern: p) }
        regexes = compiled
    }

    /// `random` in [0, 1) picks among weighted destinations (injected so tests are exact).
    public func decide(_ req: RequestAttributes, random: Double) -> RouteDecision {
        for (index, route) in routes.enumerated() {
            guard let matched = firstMatch(route, req) else { continue }
            if let d = route.directResponse { return .directResponse(status: d.status, body: d.body) }
            if let r = route.redirect { return .redirect(location: location(r, req), status: r.redirectCode) }
            // Weighted choice; a lone destination without weight takes everything.
            guard let i = pickWeightedIndex(route.route, weight: \.weight, random: random) else { return .noRoute }
            let chosen = route.route[i]
            return .forward(ForwardDecision(
                destination: chosen.destination, routeIndex: index, routeName: route.name,
                path: rewrittenPath(route.rewrite, matched: matched, req: req),
                authority: route.rewrite?.authority ?? req.authority,
                timeout: route.timeout, retries: route.retries, fault: route.fault,
                mirror: route.mirror, mirrorPercentage: route.mirror == nil ? nil : (route.mirrorPercentage ?? 100),
                requestHeaders: operations[index][i].request, responseHeaders: operations[index][i].response))
        }
        return .noRoute
    }

    /// The route's header operations, then the destination's, with their names in lower
    /// case: names are case-insensitive, the proxy compares them as bytes, and Envoy
    /// writes them lower-cased too (two names that differ only in case are one header:
    /// the greater value wins, whatever the file's order).
    static func operations(_ route: HeaderOperations?, _ destination: HeaderOperations?) -> [HeaderOperations] {
        [route, destination].compactMap { ops in
            ops.map { o in
                var l = o
                l.set = Dictionary(o.set.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { max($0, $1) })
                l.add = Dictionary(o.add.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { max($0, $1) })
                l.remove = o.remove.map { $0.lowercased() }
                return l
            }
        }
    }

    /// The match block that matched (nil: the route does not apply). A route without
    /// match blocks matches with an empty one.
    func firstMatch(_ route: HTTPRoute, _ req: RequestAttributes) -> HTTPMatch? {
        if route.match.isEmpty { return HTTPMatch() }
        return route.match.first { matches($0, req) }
    }

    func matches(_ m: HTTPMatch, _ req: RequestAttributes) -> Bool {
        if let u = m.uri, !uriMatches(u, req, ignoreCase: m.ignoreUriCase) { return false }
        if let a = m.authority, !stringMatches(a, req.authority) { return false }
        if let meth = m.method, !stringMatches(meth, req.method) { return false }
        if let p = m.port, p != req.port { return false }
        for (k, v) in m.sourceLabels where req.sourceLabels[k] != v { return false }
        for (name, sm) in m.headers {
            guard let value = req.header(name), stringMatches(sm, value) else { return false }
        }
        for (name, sm) in m.withoutHeaders {
            if let value = req.header(name), stringMatches(sm, value) { return false }
        }
        for (name, sm) in m.queryParams {
            guard let value = req.queryParam(name), stringMatches(sm, value) else { return false }
        }
        return true
    }

    func uriMatches(_ m: StringMatch, _ req: RequestAttributes, ignoreCase: Bool) -> Bool {
        switch m {
        case .exact(let s):
            let p = String(req.pathWithoutQuery)
            return ignoreCase ? p.lowercased() == s.lowercased() : p == s
        case .prefix(let s):
            return ignoreCase ? req.path.lowercased().hasPrefix(s.lowercased()) : req.path.hasPrefix(s)
        case .regex(let r):
            return fullMatch(r, String(req.pathWithoutQuery))
        }
    }

    func stringMatches(_ m: StringMatch, _ value: String) -> Bool {
        switch m {
        case .exact(let s): return value == s
        case .prefix(let s): return value.hasPrefix(s)
        case .regex(let r): return fullMatch(r, value)
        }
    }

    /// RE2 semantics in Istio: the whole value must match.
    func fullMatch(_ pattern: String, _ value: String) -> Bool {
        guard let re = regexes[pattern] else { return false }
        let range = NSRange(value.startIndex..., in: value)
        guard let m = re.firstMatch(in: value, options: [.anchored], range: range) else { return false }
        return m.range.location == 0 && m.range.length == range.length
    }

    /// A prefix match has only its prefix replaced; any other match the whole path.
    func rewrittenPath(_ rewrite: HTTPRewrite?, matched: HTTPMatch, req: RequestAttributes) -> String {
        guard let newURI = rewrite?.uri else { return req.path }
        if case .prefix(let prefix)? = matched.uri {
            return newURI + req.path.dropFirst(prefix.count)
        }
        let query = req.path.firstIndex(of: "?").map { String(req.path[$0...]) } ?? ""
        return newURI + (newURI.contains("?") ? "" : query)
    }

    func location(_ r: HTTPRedirect, _ req: RequestAttributes) -> String {
        let scheme = r.scheme ?? "http"
        var authority = r.authority ?? req.authority
        if let port = r.port {
            authority = authority.split(separator: ":").first.map(String.init) ?? authority
            authority += ":\(port)"
        }
        var path = req.path
        if let uri = r.uri {
            let query = req.path.firstIndex(of: "?").map { String(req.path[$0...]) } ?? ""
            path = uri + (uri.contains("?") ? "" : query)
        }
        return "\(scheme)://\(authority)\(path)"
    }
}
