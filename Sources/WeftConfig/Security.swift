import Foundation

/// PeerAuthentication / per-port mTLS modes.
public enum MTLSMode: String, Hashable, Sendable, Codable {
    case unset = "UNSET"
    case disable = "DISABLE"
    case permissive = "PERMISSIVE"
    case strict = "STRICT"
}

/// security.istio.io PeerAuthentication (enforced with the mTLS tunnel).
public struct PeerAuthentication: Hashable, Sendable, Codable {
    public var metadata: Metadata
    /// selector.matchLabels; nil means the whole namespace (or mesh, in the root namespace).
    public var selector: Labels?
    public var mode: MTLSMode?
    public var portLevelMtls: [UInt16: MTLSMode] = [:]
    public var position: SourcePosition

    /// Mesh-wide, namespace-wide, or workload scope.
    public enum Scope: String, Sendable { case mesh, namespace, workload }

    /// The policy's scope, given the mesh root namespace.
    public func scope(rootNamespace: String) -> Scope {
        if selector != nil { return .workload }
        return metadata.namespace == rootNamespace ? .mesh : .namespace
    }
}

/// AuthorizationPolicy actions weft implements.
public enum AuthorizationAction: String, Hashable, Sendable, Codable {
    case allow = "ALLOW"
    case deny = "DENY"
    case audit = "AUDIT"
}

public struct AuthorizationSource: Hashable, Sendable, Codable {
    public var principals: [String]?
    public var notPrincipals: [String]?
    public var namespaces: [String]?
    public var notNamespaces: [String]?
    public var ipBlocks: [String]?
    public var notIpBlocks: [String]?
}

public struct AuthorizationOperation: Hashable, Sendable, Codable {
    public var hosts: [String]?
    public var notHosts: [String]?
    public var ports: [String]?
    public var notPorts: [String]?
    public var methods: [String]?
    public var notMethods: [String]?
    public var paths: [String]?
    public var notPaths: [String]?
}

public struct AuthorizationCondition: Hashable, Sendable, Codable {
    public var key: String
    public var values: [String]?
    public var notValues: [String]?
}

public struct AuthorizationRule: Hashable, Sendable, Codable {
    public var from: [AuthorizationSource] = []
    public var to: [AuthorizationOperation] = []
    public var when: [AuthorizationCondition] = []
}

/// security.istio.io AuthorizationPolicy (enforced by the inbound side of the tunnel).
public struct AuthorizationPolicy: Hashable, Sendable, Codable {
    public var metadata: Metadata
    public var selector: Labels?
    public var action: AuthorizationAction
    /// nil: no `rules` field (ALLOW with no rules matches nothing → denies all).
    public var rules: [AuthorizationRule]?
    public var position: SourcePosition
}

extension ResourceDecoder {
    static func decodeSelector(_ spec: YMap) -> Labels? {
        guard let sel = spec["selector"]?.mapping() else { return nil }
        let labels = sel["matchLabels"]?.stringMap() ?? [:]
        sel.finish(kind: "WorkloadSelector", istioFields: ["matchExpressions"])
        return labels
    }

    static func decodeMTLSMode(_ node: YNode) -> MTLSMode? {
        guard let s = node.string() else { return nil }
        guard let mode = MTLSMode(rawValue: s) else {
            node.ctx.error("PA001", node.node, "\(node.path) \"\(s)\" is not an mTLS mode (UNSET, DISABLE, PERMISSIVE, STRICT)")
            return nil
        }
        return mode
    }

    static func decodePeerAuthentication(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> PeerAuthentication? {
        let ctx = spec.ctx
        let selector = decodeSelector(spec)
        var mode: MTLSMode?
        if let m = spec["mtls"]?.mapping() {
            mode = m["mode"].flatMap(decodeMTLSMode)
            m.finish(kind: "MutualTLS")
        }
        var ports: [UInt16: MTLSMode] = [:]
        if let pl = spec["portLevelMtls"] {
            if selector == nil {
                ctx.error("PA002", pl.node, "spec.portLevelMtls needs a selector (port-level mTLS applies to specific workloads)")
            }
            for (k, v) in pl.mapping()?.allPairs() ?? [] {
                guard let port = UInt16(k), port > 0 else {
                    ctx.error("VAL001", v.node, "\(v.path): \"\(k)\" is not a port number 1..65535")
                    continue
                }
                if let m = v.mapping() {
                    if let mode = m.required("mode").flatMap(decodeMTLSMode) { ports[port] = mode }
                    m.finish(kind: "MutualTLS")
                }
            }
        }
        spec.finish(kind: "PeerAuthentication")
        return PeerAuthentication(metadata: meta, selector: selector, mode: mode, portLevelMtls: ports, position: pos)
    }

    /// `when` keys weft evaluates; Istio's request.auth.* (JWT) and remote.ip are not yet.
    static let conditionKeys: Set<String> = ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port", "connection.sni"]

    static func decodeAuthorizationPolicy(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> AuthorizationPolicy? {
        let ctx = spec.ctx
        let selector = decodeSelector(spec)
        var action = AuthorizationAction.allow
        if let a = spec["action"], let s = a.string() {
            if let act = AuthorizationAction(rawValue: s) { action = act } else if s == "CUSTOM" {
                ctx.error("FLD002", a.node, "spec.action CUSTOM (external authorization) is not supported by weft yet")
            } else {
                ctx.error("AP001", a.node, "spec.action \"\(s)\" is not an action (ALLOW, DENY, AUDIT, CUSTOM)")
            }
        }
        var rules: [AuthorizationRule]?
        if let rs = spec["rules"]?.sequence() {
            rules = rs.compactMap { $0.mapping().map(decodeRule) }
        }
        if action == .deny && (rules ?? []).isEmpty {
            ctx.error("AP002", spec["action"]?.node ?? spec.node, "a DENY policy needs rules: without them it would deny nothing")
        }
        spec.finish(kind: "AuthorizationPolicy", istioFields: ["provider", "targetRef", "targetRefs"])
        return AuthorizationPolicy(metadata: meta, selector: selector, action: action, rules: rules, position: pos)
    }

    static func decodeRule(_ m: YMap) -> AuthorizationRule {
        let ctx = m.ctx
        var rule = AuthorizationRule()
        for f in m["from"]?.sequence() ?? [] {
            guard let fm = f.mapping() else { continue }
            if let s = fm.required("source")?.mapping() {
                var src = AuthorizationSource()
                src.principals = s["principals"]?.wildcardList(code: "AP003")
                src.notPrincipals = s["notPrincipals"]?.wildcardList(code: "AP003")
                src.namespaces = s["namespaces"]?.wildcardList(code: "AP003")
                src.notNamespaces = s["notNamespaces"]?.wildcardList(code: "AP003")
                src.ipBlocks = s["ipBlocks"].flatMap(ipBlocks)
                src.notIpBlocks = s["notIpBlocks"].flatMap(ipBlocks)
                s.finish(kind: "Source", istioFields: ["requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks",
                                                       "serviceAccounts", "notServiceAccounts"])
                rule.from.append(src)
            }
            fm.finish(kind: "Rule.From")
        }
        for t in m["to"]?.sequence() ?? [] {
            guard let tm = t.mapping() else { continue }
            if let o = tm.required("operation")?.mapping() {
                var op = AuthorizationOperation()
                op.hosts = o["hosts"]?.wildcardList(code: "AP003")
                op.notHosts = o["notHosts"]?.wildcardList(code: "AP003")
                op.ports = o["ports"].flatMap(portStrings)
                op.notPorts = o["notPorts"].flatMap(portStrings)
                op.methods = o["methods"]?.wildcardList(code: "AP003")
                op.notMethods = o["notMethods"]?.wildcardList(code: "AP003")
                op.paths = o["paths"]?.wildcardList(code: "AP003")
                op.notPaths = o["notPaths"]?.wildcardList(code: "AP003")
                o.finish(kind: "Operation")
                rule.to.append(op)
            }
            tm.finish(kind: "Rule.To")
        }
        for w in m["when"]?.sequence() ?? [] {
            guard let wm = w.mapping() else { continue }
            let key = wm.required("key")?.string()
            let values = wm["values"]?.wildcardList(code: "AP003")
            let notValues = wm["notValues"]?.wildcardList(code: "AP003")
            wm.finish(kind: "Condition")
            guard let key else { continue }
            if values == nil && notValues == nil {
                ctx.error("AP004", wm.node, "\(w.path) needs values or notValues")
            }
            let isHeader = key.hasPrefix("request.headers[") && key.hasSuffix("]") && key.count > "request.headers[]".count
            if !conditionKeys.contains(key) && !isHeader {
                let later = key.hasPrefix("request.auth.") || key == "remote.ip" || key.hasPrefix("experimental.")
                ctx.error(later ? "FLD002" : "AP005", wm["key"]?.node,
                          later ? "\(w.path).key \(key) is not supported by weft yet" : "\(w.path).key \"\(key)\" is not a condition key")
            }
            rule.when.append(AuthorizationCondition(key: key, values: values, notValues: notValues))
        }
        m.finish(kind: "Rule")
        return rule
    }

    static func ipBlocks(_ node: YNode) -> [String]? {
        guard let items = node.sequence() else { return nil }
        if items.isEmpty { return node.emptyListIsUnset() }
        var out: [String] = []
        for item in items {
            guard let s = item.string() else { continue }
            let parts = s.split(separator: "/", maxSplits: 1)
            let addr = IPAddress(String(parts[0]))
            let bits = parts.count == 2 ? Int(parts[1]) : nil
            if addr == nil || (parts.count == 2 && (bits == nil || bits! < 0 || bits! > (addr!.family == 4 ? 32 : 128))) {
                item.ctx.error("AP006", item.node, "\(item.path) \"\(s)\" is not an IP address or CIDR range")
                continue
            }
            out.append(s)
        }
        return out
    }

    static func portStrings(_ node: YNode) -> [String]? {
        guard let items = node.sequence() else { return nil }
        if items.isEmpty { return node.emptyListIsUnset() }
        var out: [String] = []
        for item in items {
            guard let s = item.string() else { continue }
            guard let p = Int(s), (1...65535).contains(p) else {
                item.ctx.error("VAL001", item.node, "\(item.path) \"\(s)\" is not a port number 1..65535")
                continue
            }
            out.append(s)
        }
        return out
    }
}
