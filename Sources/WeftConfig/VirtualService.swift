import Foundation

/// networking.istio.io VirtualService: request routing (enforced by the L7 proxy).
public struct VirtualService: Hashable, Sendable, Codable {
    public var metadata: Metadata
    /// Hosts, fully qualified.
    public var hosts: [String]
    public var http: [HTTPRoute]
    public var tcp: [TCPRoute]
    public var position: SourcePosition
}

/// Where a route sends traffic.
public struct Destination: Hashable, Sendable, Codable {
    /// Host, fully qualified.
    public var host: String
    public var subset: String?
    public var port: UInt16?
    /// Position of the `destination` node (cross-resource checks point here).
    public var position: SourcePosition

    /// A destination not read from a file (the proxy's default route).
    public init(host: String, subset: String? = nil, port: UInt16? = nil) {
        self.host = host
        self.subset = subset
        self.port = port
        position = SourcePosition(file: "", line: 0, column: 0)
    }

    init(host: String, subset: String?, port: UInt16?, position: SourcePosition) {
        self.host = host
        self.subset = subset
        self.port = port
        self.position = position
    }
}

public struct HeaderOperations: Hashable, Sendable, Codable {
    public var set: [String: String] = [:]
    public var add: [String: String] = [:]
    public var remove: [String] = []
}

public struct Headers: Hashable, Sendable, Codable {
    public var request: HeaderOperations?
    public var response: HeaderOperations?
}

public struct HTTPMatch: Hashable, Sendable, Codable {
    public var name: String?
    public var uri: StringMatch?
    public var authority: StringMatch?
    public var method: StringMatch?
    public var headers: [String: StringMatch] = [:]
    public var queryParams: [String: StringMatch] = [:]
    public var withoutHeaders: [String: StringMatch] = [:]
    public var port: UInt16?
    public var sourceLabels: Labels = [:]
    public var ignoreUriCase = false

    /// A match block with no conditions: matches every request.
    public init() {}
}

public struct HTTPRouteDestination: Hashable, Sendable, Codable {
    public var destination: Destination
    public var weight: Int?
    public var headers: Headers?
}

public struct HTTPRedirect: Hashable, Sendable, Codable {
    public var uri: String?
    public var authority: String?
    public var port: UInt16?
    public var scheme: String?
    public var redirectCode: Int = 301
}

public struct HTTPRewrite: Hashable, Sendable, Codable {
    public var uri: String?
    public var authority: String?
}

public struct HTTPRetry: Hashable, Sendable, Codable {
    public var attempts: Int
    public var perTryTimeout: IstioDuration?
    /// Conditions (`5xx`, `reset`, … and numeric status codes).
    public var retryOn: [String] = []

    public init(attempts: Int, perTryTimeout: IstioDuration? = nil, retryOn: [String] = []) {
        self.attempts = attempts
        self.perTryTimeout = perTryTimeout
        self.retryOn = retryOn
    }
}

public struct FaultDelay: Hashable, Sendable, Codable {
    public var fixedDelay: IstioDuration
    /// Percent of requests, 0..100 (100 when unset).
    public var percentage: Double
}

public struct FaultAbort: Hashable, Sendable, Codable {
    public var httpStatus: Int?
    public var grpcStatus: String?
    public var percentage: Double
}

public struct HTTPFault: Hashable, Sendable, Codable {
    public var delay: FaultDelay?
    public var abort: FaultAbort?
}

public struct DirectResponse: Hashable, Sendable, Codable {
    public var status: Int
    public var body: String?
}

public struct HTTPRoute: Hashable, Sendable, Codable {
    public var name: String?
    public var match: [HTTPMatch] = []
    public var route: [HTTPRouteDestination] = []
    public var redirect: HTTPRedirect?
    public var directResponse: DirectResponse?
    public var rewrite: HTTPRewrite?
    public var timeout: IstioDuration?
    public var retries: HTTPRetry?
    public var fault: HTTPFault?
    public var mirror: Destination?
    public var mirrorPercentage: Double?
    public var headers: Headers?
}

public struct L4Match: Hashable, Sendable, Codable {
    public var port: UInt16?
    public var sourceLabels: Labels = [:]
}

public struct TCPRouteDestination: Hashable, Sendable, Codable {
    public var destination: Destination
    public var weight: Int?
}

public struct TCPRoute: Hashable, Sendable, Codable {
    public var match: [L4Match] = []
    public var route: [TCPRouteDestination] = []
}

extension ResourceDecoder {
    /// retryOn conditions weft implements, and those Istio/Envoy have that weft does not.
    static let retryOnSupported: Set<String> = ["5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx",
                                                "retriable-status-codes", "cancelled", "deadline-exceeded", "resource-exhausted", "unavailable"]
    static let retryOnLater: Set<String> = ["envoy-ratelimited", "retriable-headers", "reset-before-request", "http3-post-connect-failure", "internal"]
    static let grpcCodes: Set<String> = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                                         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]

    static func decodeVirtualService(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> VirtualService? {
        let ctx = spec.ctx
        var hosts: [String] = []
        if let hs = spec.required("hosts")?.sequence() {
            if hs.isEmpty { ctx.error("VS001", spec["hosts"]?.node, "spec.hosts must name at least one host") }
            for h in hs { if let s = h.string() { hosts.append(HostName.qualify(s, namespace: meta.namespace)) } }
        }
        var http: [HTTPRoute] = []
        for r in spec["http"]?.sequence() ?? [] {
            if let m = r.mapping(), let route = decodeHTTPRoute(m, ns: meta.namespace) { http.append(route) }
        }
        var tcp: [TCPRoute] = []
        for r in spec["tcp"]?.sequence() ?? [] {
            if let m = r.mapping(), let route = decodeTCPRoute(m, ns: meta.namespace) { tcp.append(route) }
        }
        if spec["http"] == nil && spec["tcp"] == nil {
            ctx.error("VS002", spec.node, "spec needs http or tcp routes")
        }
        spec.finish(kind: "VirtualService", istioFields: ["gateways", "tls", "exportTo"])
        return VirtualService(metadata: meta, hosts: hosts, http: http, tcp: tcp, position: pos)
    }

    static func decodeDestination(_ node: YNode, ns: String) -> Destination? {
        guard let m = node.mapping() else { return nil }
        let host = m.required("host")?.string()
        let subset = m["subset"]?.string()
        var port: UInt16?
        if let p = m["port"]?.mapping() {
            port = p.required("number")?.port()
            p.finish(kind: "PortSelector")
        }
        m.finish(kind: "Destination")
        guard let host else { return nil }
        return Destination(host: HostName.qualify(host, namespace: ns), subset: subset, port: port, position: node.position)
    }

    static func decodeHeaders(_ node: YNode) -> Headers? {
        guard let m = node.mapping() else { return nil }
        func ops(_ key: String) -> HeaderOperations? {
            guard let o = m[key]?.mapping() else { return nil }
            var h = HeaderOperations()
            h.set = o["set"]?.stringMap() ?? [:]
            h.add = o["add"]?.stringMap() ?? [:]
            h.remove = o["remove"]?.stringList() ?? []
            for n in [o["set"], o["add"]].compactMap({ $0 }) {
                for (k, v) in n.mapping()?.allPairs() ?? [] {
                    if !isHeaderName(k) { m.ctx.error("VS010", v.node, "\(n.path): \"\(k)\" is not a valid header name") }
                    if k.lowercased().hasPrefix("weft-") {
                        m.ctx.error("VS010", v.node, "\(n.path): \"\(k)\": weft-* fields are the mTLS tunnel's own and never pass the proxy")
                    }
                    // A line break would end the field early on HTTP/1.1 (a header of the
                    // route's own making injected) and is malformed in HTTP/2.
                    if let value = v.scalarText, value.utf8.contains(where: { $0 == 0 || $0 == 0x0a || $0 == 0x0d }) {
                        m.ctx.error("VS010", v.node, "\(n.path).\(k): a header value cannot hold NUL, CR or LF")
                    }
                }
            }
            o.finish(kind: "HeaderOperations")
            return h
        }
        let h = Headers(request: ops("request"), response: ops("response"))
        m.finish(kind: "Headers")
        return h
    }

    static func isHeaderName(_ s: String) -> Bool {
        !s.isEmpty && s.unicodeScalars.allSatisfy { $0.isASCII && $0.value > 32 && $0.value < 127 && !"()<>@,;:\\\"/[]?={}".unicodeScalars.contains($0) }
    }

    static func decodeHTTPMatch(_ m: YMap) -> HTTPMatch {
        var match = HTTPMatch()
        match.name = m["name"]?.string()
        match.uri = m["uri"]?.stringMatch(code: "VS011")
        match.authority = m["authority"]?.stringMatch(code: "VS011")
        match.method = m["method"]?.stringMatch(code: "VS011")
        match.headers = m["headers"]?.stringMatchMap(code: "VS011") ?? [:]
        match.queryParams = m["queryParams"]?.stringMatchMap(code: "VS011") ?? [:]
        for (k, v) in m["queryParams"]?.mapping()?.allPairs() ?? [] where v.mapping()?["prefix"] != nil {
            // Istio matches query parameters by exact value or regex only.
            m.ctx.error("VS014", v.node, "\(v.path): prefix is not supported for queryParams (use exact or regex); parameter \(k)")
        }
        match.withoutHeaders = m["withoutHeaders"]?.stringMatchMap(code: "VS011") ?? [:]
        match.port = m["port"]?.port()
        match.sourceLabels = m["sourceLabels"]?.stringMap() ?? [:]
        match.ignoreUriCase = m["ignoreUriCase"]?.bool() ?? false
        m.finish(kind: "HTTPMatchRequest", istioFields: ["scheme", "gateways", "sourceNamespace", "statPrefix"])
        return match
    }

    static func decodeHTTPRoute(_ m: YMap, ns: String) -> HTTPRoute? {
        let ctx = m.ctx
        var r = HTTPRoute()
        r.name = m["name"]?.string()
        r.match = (m["match"]?.sequence() ?? []).compactMap { $0.mapping().map(decodeHTTPMatch) }
        if let routes = m["route"]?.sequence() {
            for d in routes {
                guard let dm = d.mapping() else { continue }
                let dest = dm.required("destination").flatMap { decodeDestination($0, ns: ns) }
                let weight = dm["weight"].flatMap(routeWeight)
                let headers = dm["headers"].flatMap(decodeHeaders)
                dm.finish(kind: "HTTPRouteDestination")
                if let dest { r.route.append(HTTPRouteDestination(destination: dest, weight: weight, headers: headers)) }
            }
            checkWeights(r.route.map(\.weight), node: m["route"]!, ctx: ctx)
        }
        if let rd = m["redirect"]?.mapping() {
            var red = HTTPRedirect()
            red.uri = rd["uri"]?.string()
            red.authority = rd["authority"]?.string()
            red.port = rd["port"]?.port()
            red.scheme = rd["scheme"]?.string()
            if let c = rd["redirectCode"], let v = c.int(in: 0...999) {
                if ![301, 302, 303, 307, 308].contains(v) {
                    ctx.error("VS004", c.node, "\(c.path) must be a redirect status (301, 302, 303, 307, 308; got \(v))")
                }
                red.redirectCode = v
            }
            rd.finish(kind: "HTTPRedirect", istioFields: ["derivePort"])
            r.redirect = red
        }
        if let dr = m["directResponse"]?.mapping() {
            let status = dr.required("status")?.int(in: 200...599)
            var body: String?
            if let b = dr["body"]?.mapping() {
                body = b["string"]?.string()
                b.finish(kind: "HTTPBody", istioFields: ["bytes"])
            }
            dr.finish(kind: "HTTPDirectResponse")
            if let status { r.directResponse = DirectResponse(status: status, body: body) }
        }
        let actions = [m["route"], m["redirect"], m["directResponse"]].compactMap { $0 }
        if actions.count > 1 {
            ctx.error("VS005", actions[1].node, "\(m.path): route, redirect and directResponse are exclusive (set one)")
        } else if actions.isEmpty {
            ctx.error("VS005", m.node, "\(m.path) needs a route, a redirect or a directResponse")
        }
        if let rw = m["rewrite"]?.mapping() {
            r.rewrite = HTTPRewrite(uri: rw["uri"]?.string(), authority: rw["authority"]?.string())
            rw.finish(kind: "HTTPRewrite", istioFields: ["uriRegexRewrite"])
            if m["redirect"] != nil { ctx.error("VS005", m["rewrite"]?.node, "\(m.path): rewrite and redirect cannot both be set") }
        }
        r.timeout = m["timeout"]?.duration(code: "VS006")
        if let rt = m["retries"]?.mapping() {
            let attempts = rt.required("attempts")?.int(in: 0...Int(Int32.max))
            let perTry = rt["perTryTimeout"]?.duration(code: "VS006")
            var on: [String] = []
            if let n = rt["retryOn"], let s = n.string() {
                for cond in s.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                    if retryOnSupported.contains(cond) || (Int(cond).map { (100...599).contains($0) } ?? false) {
                        on.append(cond)
                    } else if retryOnLater.contains(cond) {
                        ctx.error("FLD002", n.node, "\(n.path): retryOn condition \(cond) is not supported by weft yet")
                    } else {
                        ctx.error("VS007", n.node, "\(n.path): \"\(cond)\" is not a retry condition")
                    }
                }
            }
            // Type-checked only: it chooses between localities, and weft balances over all
            // of a cluster's endpoints with no locality preference — what Istio does too
            // when locality load balancing is off — so either value means the same here.
            _ = rt["retryRemoteLocalities"]?.bool()
            rt.finish(kind: "HTTPRetry", istioFields: ["retryIgnorePreviousHosts", "backoff"])
            if let attempts { r.retries = HTTPRetry(attempts: attempts, perTryTimeout: perTry, retryOn: on) }
        }
        if let f = m["fault"]?.mapping() {
            var fault = HTTPFault()
            if let d = f["delay"]?.mapping() {
                let fixed = d.required("fixedDelay")?.duration(code: "VS006")
                let pct = d["percentage"].flatMap(percentage) ?? 100
                d.finish(kind: "Delay", istioFields: ["percent", "exponentialDelay"])
                if let fixed { fault.delay = FaultDelay(fixedDelay: fixed, percentage: pct) }
            }
            if let a = f["abort"]?.mapping() {
                let http = a["httpStatus"]?.int(in: 200...599)
                var grpc: String?
                if let g = a["grpcStatus"], let s = g.string() {
                    if grpcCodes.contains(s) { grpc = s } else {
                        ctx.error("VS008", g.node, "\(g.path) \"\(s)\" is not a gRPC status name (e.g. UNAVAILABLE)")
                    }
                }
                if (a["httpStatus"] == nil) == (a["grpcStatus"] == nil) {
                    ctx.error("VS008", a.node, "\(a.path) must set exactly one of httpStatus, grpcStatus")
                }
                let pct = a["percentage"].flatMap(percentage) ?? 100
                a.finish(kind: "Abort", istioFields: ["http2Error"])
                fault.abort = FaultAbort(httpStatus: http, grpcStatus: grpc, percentage: pct)
            }
            f.finish(kind: "HTTPFaultInjection")
            r.fault = fault
        }
        r.mirror = m["mirror"].flatMap { decodeDestination($0, ns: ns) }
        r.mirrorPercentage = m["mirrorPercentage"].flatMap(percentage)
        if m["mirrorPercentage"] != nil && m["mirror"] == nil {
            ctx.error("VS009", m["mirrorPercentage"]?.node, "\(m.path).mirrorPercentage needs mirror")
        }
        r.headers = m["headers"].flatMap(decodeHeaders)
        m.finish(kind: "HTTPRoute", istioFields: ["delegate", "mirrors", "corsPolicy", "mirrorPercent"])
        return r
    }

    /// A route weight: an integer ≥ 0.
    static func routeWeight(_ w: YNode) -> Int? {
        guard let v = w.int(in: Int(Int32.min)...Int(Int32.max)) else { return nil }
        if v < 0 {
            w.ctx.error("VS003", w.node, "\(w.path) must be ≥ 0 (got \(v))")
            return nil
        }
        return v
    }

    /// `{value: <0..100>}`.
    static func percentage(_ node: YNode) -> Double? {
        guard let m = node.mapping() else { return nil }
        let v = m.required("value")?.percent(code: "VAL002")
        m.finish(kind: "Percent")
        return v
    }

    /// Several destinations need weights summing to more than 0; ≠ 100 is a warning (as
    /// current Istio normalizes).
    static func checkWeights(_ weights: [Int?], node: YNode, ctx: DecodeContext) {
        guard weights.count > 1 else { return }
        let total = weights.reduce(0) { $0 + ($1 ?? 0) }
        if total == 0 {
            ctx.error("VS012", node.node, "\(node.path): weights of several destinations must add up to more than 0")
        } else if total != 100 {
            ctx.warning("VS013", node.node, "\(node.path): weights add up to \(total), not 100; they are used as proportions")
        }
    }

    static func decodeTCPRoute(_ m: YMap, ns: String) -> TCPRoute? {
        var r = TCPRoute()
        for mt in m["match"]?.sequence() ?? [] {
            guard let mm = mt.mapping() else { continue }
            r.match.append(L4Match(port: mm["port"]?.port(), sourceLabels: mm["sourceLabels"]?.stringMap() ?? [:]))
            mm.finish(kind: "L4MatchAttributes", istioFields: ["destinationSubnets", "gateways", "sourceNamespace"])
        }
        if let routes = m.required("route")?.sequence() {
            for d in routes {
                guard let dm = d.mapping() else { continue }
                let dest = dm.required("destination").flatMap { decodeDestination($0, ns: ns) }
                let weight = dm["weight"].flatMap(routeWeight)
                dm.finish(kind: "RouteDestination")
                if let dest { r.route.append(TCPRouteDestination(destination: dest, weight: weight)) }
            }
            checkWeights(r.route.map(\.weight), node: m["route"]!, ctx: m.ctx)
        }
        m.finish(kind: "TCPRoute")
        return r
    }
}
