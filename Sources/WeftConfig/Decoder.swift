import Yams

/// One decoded resource of a kind weft knows.
public enum Resource: Hashable, Sendable, Codable {
    case serviceEntry(ServiceEntry)
    case workloadEntry(WorkloadEntry)
    case destinationRule(DestinationRule)
    case virtualService(VirtualService)
    case peerAuthentication(PeerAuthentication)
    case authorizationPolicy(AuthorizationPolicy)
    case telemetry(Telemetry)
    case meshConfig(MeshConfig)

    /// The resource's kind name.
    public var kind: String { id.kind }

    private var parts: (kind: String, metadata: Metadata, position: SourcePosition) {
        switch self {
        case .serviceEntry(let r): return ("ServiceEntry", r.metadata, r.position)
        case .workloadEntry(let r): return ("WorkloadEntry", r.metadata, r.position)
        case .destinationRule(let r): return ("DestinationRule", r.metadata, r.position)
        case .virtualService(let r): return ("VirtualService", r.metadata, r.position)
        case .peerAuthentication(let r): return ("PeerAuthentication", r.metadata, r.position)
        case .authorizationPolicy(let r): return ("AuthorizationPolicy", r.metadata, r.position)
        case .telemetry(let r): return ("Telemetry", r.metadata, r.position)
        case .meshConfig(let r): return ("MeshConfig", r.metadata, r.position)
        }
    }

    /// Kind, namespace and name.
    public var id: ResourceID {
        let p = parts
        return ResourceID(kind: p.kind, namespace: p.metadata.namespace, name: p.metadata.name)
    }

    /// Where the resource starts in its file.
    public var position: SourcePosition { parts.position }
}

extension WorkloadEntry {
    /// Kind, namespace and name.
    public var id: ResourceID { Resource.workloadEntry(self).id }
    /// Its SPIFFE URI: service account `default` when the entry names none (as Kubernetes).
    public func identity(trustDomain: String) -> String {
        "spiffe://\(trustDomain)/ns/\(metadata.namespace)/sa/\(spec.serviceAccount ?? "default")"
    }
}

/// A decoded resource with its YAML document and where it came from.
public struct Document: Hashable, Sendable, Codable {
    /// The resource.
    public var resource: Resource
    /// Its YAML document (normalized by the YAML serializer).
    public var yaml: String
    /// A file path, or `apply` for resources pushed with `weft apply`.
    public var origin: String

    /// Creates a document.
    public init(resource: Resource, yaml: String, origin: String) {
        self.resource = resource
        self.yaml = yaml
        self.origin = origin
    }
}

/// Turns YAML text into resources, reporting every problem with its position.
enum ResourceDecoder {
    static let networkingVersions = ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]
    static let securityVersions = ["security.istio.io/v1", "security.istio.io/v1beta1"]
    /// Istio kinds weft will enforce in later releases; named so the error says so.
    static let laterKinds: Set<String> = ["Gateway", "Sidecar", "WorkloadGroup", "EnvoyFilter", "ProxyConfig", "RequestAuthentication", "WasmPlugin"]

    static func decode(text: String, file: String, sink: DiagnosticSink) -> [Document] {
        var out: [Document] = []
        let docs: YamlSequence<Node>
        do {
            // weft types scalars itself from their text and style; Yams' implicit tag
            // resolution (a regex per scalar) would only cost time.
            docs = try Yams.compose_all(yaml: text, .basic)
        } catch {
            report(yamlError: error, file: file, text: text, sink: sink)
            return []
        }
        var seq = docs
        while let node = seq.next() {
            let ctx = DecodeContext(file: file, sink: sink)
            if let r = decodeDocument(YNode(node: node, path: "", ctx: ctx)) {
                // The document as YAML, for `weft get`, diffs and the persisted revisions.
                let yaml = (try? Yams.serialize(node: node)) ?? ""
                out.append(Document(resource: r, yaml: yaml, origin: file))
            }
        }
        if let error = seq.error { report(yamlError: error, file: file, text: text, sink: sink) }
        return out
    }

    /// YAML syntax errors: position plus the offending line with a caret under the column.
    static func report(yamlError error: Error, file: String, text: String, sink: DiagnosticSink) {
        var mark: Mark?
        var problem = "\(error)"
        if let y = error as? YamlError {
            switch y {
            case .scanner(let c, let p, let m, _), .parser(let c, let p, let m, _), .composer(let c, let p, let m, _):
                mark = m
                problem = p + (c.map { " (\($0.text) at line \($0.mark.line))" } ?? "")
            case .duplicatedKeysInMapping(let dups, let c):
                mark = c.mark
                problem = "duplicate key \(dups.joined(separator: ", ")) in a mapping"
            case .reader(let p, _, _, _):
                problem = p
            default: break
            }
        }
        let line = mark?.line ?? 1
        let col = mark?.column ?? 1
        var snippet: String?
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if line >= 1 && line <= lines.count {
            snippet = "    \(lines[line - 1])\n    \(String(repeating: " ", count: max(col - 1, 0)))^"
        }
        sink.items.append(Diagnostic(.error, "YAML001", at: SourcePosition(file: file, line: line, column: col),
                                     "YAML syntax error: \(problem)", snippet: snippet))
    }

    static func decodeDocument(_ doc: YNode) -> Resource? {
        if case .scalar(let s) = doc.node, s.string.isEmpty { return nil } // empty document
        guard let top = doc.mapping() else { return nil }
        guard let kind = top.required("kind")?.string(), let apiVersion = top.required("apiVersion")?.string() else { return nil }
        let ctx = doc.ctx
        let allowed: [String]
        switch kind {
        case "ServiceEntry", "WorkloadEntry", "DestinationRule", "VirtualService": allowed = networkingVersions
        case "PeerAuthentication", "AuthorizationPolicy": allowed = securityVersions
        case "Telemetry": allowed = telemetryVersions
        case "MeshConfig": allowed = weftVersions
        default:
            if laterKinds.contains(kind) {
                ctx.error("KIND002", top["kind"]?.node, "kind \(kind) is not supported by weft yet")
            } else {
                ctx.error("KIND001", top["kind"]?.node, "unknown kind \(kind) (weft reads ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, Telemetry, and weft.io's MeshConfig)")
            }
            return nil
        }
        if !allowed.contains(apiVersion) {
            ctx.error("KIND003", top["apiVersion"]?.node, "apiVersion \(apiVersion) is not valid for \(kind); use one of \(allowed.joined(separator: ", "))")
            return nil
        }
        guard let meta = decodeMetadata(top.required("metadata"), kind: kind) else { return nil }
        ctx.resource = "\(kind) \(meta.namespace)/\(meta.name)"
        let spec = top.required("spec")
        top.finish(kind: kind, istioFields: ["status"])
        guard let spec, let m = spec.mapping() else { return nil }
        let pos = ctx.position(doc.node)
        let errorsBefore = ctx.sink.items.count
        let r: Resource?
        switch kind {
        case "ServiceEntry": r = decodeServiceEntry(m, meta: meta, pos: pos).map(Resource.serviceEntry)
        case "WorkloadEntry": r = decodeWorkloadEntry(m, meta: meta, pos: pos).map(Resource.workloadEntry)
        case "VirtualService": r = decodeVirtualService(m, meta: meta, pos: pos).map(Resource.virtualService)
        case "PeerAuthentication": r = decodePeerAuthentication(m, meta: meta, pos: pos).map(Resource.peerAuthentication)
        case "AuthorizationPolicy": r = decodeAuthorizationPolicy(m, meta: meta, pos: pos).map(Resource.authorizationPolicy)
        case "Telemetry": r = decodeTelemetry(m, meta: meta, pos: pos).map(Resource.telemetry)
        case "MeshConfig": r = decodeMeshConfig(m, meta: meta, pos: pos).map(Resource.meshConfig)
        default: r = decodeDestinationRule(m, meta: meta, pos: pos).map(Resource.destinationRule)
        }
        // A resource with any error is not half-used.
        return ctx.sink.items[errorsBefore...].contains { $0.severity == .error } ? nil : r
    }

    static func decodeMetadata(_ node: YNode?, kind: String) -> Metadata? {
        guard let m = node?.mapping() else { return nil }
        let name = m.required("name")?.string()
        let namespace = m["namespace"]?.string() ?? "default"
        let labels = m["labels"]?.stringMap() ?? [:]
        let annotations = m["annotations"]?.stringMap() ?? [:]
        m.finish(kind: "metadata", istioFields: ["uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "ownerReferences", "finalizers", "generateName", "deletionTimestamp"])
        guard let name else { return nil }
        for (what, value, n) in [("metadata.name", name, m["name"]), ("metadata.namespace", namespace, m["namespace"])] where !isDNSLabel(value, allowDots: what == "metadata.name") {
            m.ctx.error("META001", n?.node ?? m.node, "\(what) \"\(value)\" must be lowercase letters, digits, '-' (and '.' in names), starting and ending alphanumeric")
        }
        return Metadata(name: name, namespace: namespace, labels: labels, annotations: annotations)
    }

    static func isDNSLabel(_ s: String, allowDots: Bool) -> Bool {
        guard !s.isEmpty, s.count <= 253 else { return false }
        let ok = s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || (allowDots && $0 == ".") }
        return ok && s.first!.isLetterOrNumber && s.last!.isLetterOrNumber
    }

    static let knownProtocols: Set<String> = ["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "UDP", "MYSQL", "REDIS"]

    static func decodeServiceEntry(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> ServiceEntry? {
        let ctx = spec.ctx
        var hosts: [String] = []
        if let hs = spec.required("hosts")?.sequence() {
            if hs.isEmpty { ctx.error("SE001", spec["hosts"]?.node, "spec.hosts must name at least one host") }
            for h in hs { if let s = h.string() { hosts.append(HostName.qualify(s, namespace: meta.namespace)) } }
        }
        var addresses: [IPAddress] = []
        for a in spec["addresses"]?.sequence() ?? [] {
            guard let s = a.string() else { continue }
            if let ip = IPAddress(s) { addresses.append(ip) } else if s.contains("/") {
                ctx.error("SE002", a.node, "\(a.path) \"\(s)\": CIDR ranges are not supported by weft yet; list single addresses")
            } else {
                ctx.error("SE002", a.node, "\(a.path) \"\(s)\" is not an IPv4 or IPv6 address")
            }
        }
        var ports: [ServicePort] = []
        var seenNumbers: [UInt16: String] = [:]
        var seenNames: [String: String] = [:]
        for p in spec.required("ports")?.sequence() ?? [] {
            guard let pm = p.mapping() else { continue }
            let number = pm.required("number")?.int(in: 1...65535)
            let name = pm.required("name")?.string()
            let proto = pm["protocol"]?.string()?.uppercased() ?? "TCP"
            let target = pm["targetPort"]?.int(in: 1...65535)
            pm.finish(kind: "ServicePort")
            if let pn = pm["protocol"], !knownProtocols.contains(proto) {
                ctx.error("SE003", pn.node, "\(pn.path) \"\(proto)\" is not a protocol (one of \(knownProtocols.sorted().joined(separator: ", ")))")
            }
            guard let number, let name else { continue }
            if let other = seenNumbers[UInt16(number)] {
                ctx.error("SE004", pm["number"]?.node, "\(p.path).number \(number) is also used by \(other)")
            }
            if let other = seenNames[name] {
                ctx.error("SE004", pm["name"]?.node, "\(p.path).name \"\(name)\" is also used by \(other)")
            }
            seenNumbers[UInt16(number)] = p.path
            seenNames[name] = p.path
            ports.append(ServicePort(number: UInt16(number), name: name, protocolName: proto, targetPort: target.map { UInt16($0) }))
        }
        var resolution = Resolution.static
        if let r = spec["resolution"], let s = r.string() {
            if let v = Resolution(rawValue: s) { resolution = v } else {
                ctx.error("SE005", r.node, "spec.resolution \"\(s)\" is not a resolution (\(Resolution.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
        } else if spec["resolution"] == nil {
            ctx.error("SE005", spec.node, "spec.resolution is required (\(Resolution.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        var location = Location.meshInternal
        if let l = spec["location"], let s = l.string() {
            if let v = Location(rawValue: s) { location = v } else {
                ctx.error("SE006", l.node, "spec.location \"\(s)\" is not a location (MESH_INTERNAL, MESH_EXTERNAL)")
            }
        }
        if let e = spec["exportTo"], let list = e.stringList(), list != ["*"] {
            ctx.error("FLD002", e.node, "spec.exportTo other than [\"*\"] is not supported by weft yet")
        }
        var endpoints: [WorkloadSpec] = []
        var named: [NamedEndpoint] = []
        for e in spec["endpoints"]?.sequence() ?? [] {
            guard let m = e.mapping() else { continue }
            // A DNS name where an address goes: the agent resolves it (DNS resolutions only).
            if resolution.resolves, let a = m["address"], let text = a.string(), IPAddress(text) == nil {
                if let name = HostName.dnsName(text) {
                    let f = decodeEndpointFields(m, kind: "WorkloadEntry")
                    named.append(NamedEndpoint(name: name, ports: f.ports, labels: f.labels, weight: f.weight))
                } else {
                    ctx.error("WE001", a.node, "\(a.path) \"\(text)\" is neither an IP address nor a DNS name")
                }
                continue
            }
            if let w = decodeWorkloadSpec(m, kind: "WorkloadEntry") { endpoints.append(w) }
        }
        var selector: [String: String]?
        if let ws = spec["workloadSelector"]?.mapping() {
            selector = ws.required("labels")?.stringMap()
            ws.finish(kind: "WorkloadSelector")
            if spec["endpoints"] != nil {
                ctx.error("SE007", spec["workloadSelector"]?.node, "spec.workloadSelector and spec.endpoints cannot both be set")
            } else if resolution != .static || location == .meshExternal {
                ctx.error("SE011", spec["workloadSelector"]?.node, "spec.workloadSelector selects the mesh's workloads: it needs resolution STATIC and location MESH_INTERNAL")
            }
        }
        switch resolution {
        case .none:
            // Connections go where they were made to: there is nothing to balance.
            if let e = spec["endpoints"] {
                ctx.error("SE012", e.node, "spec.endpoints cannot be used with resolution NONE (connections go to the address they were made to)")
            }
        case .dns, .dnsRoundRobin:
            // No endpoints: the hosts are the names to resolve (Istio's behaviour).
            if spec["endpoints"] == nil && selector == nil {
                for h in hosts {
                    if h.hasPrefix("*") {
                        ctx.error("SE013", spec["hosts"]?.node, "host \(h): a wildcard cannot be resolved; resolution \(resolution.rawValue) without endpoints resolves the hosts")
                    } else {
                        named.append(NamedEndpoint(name: h))
                    }
                }
            }
        case .static:
            break
        }
        spec.finish(kind: "ServiceEntry", istioFields: ["subjectAltNames"])
        return ServiceEntry(metadata: meta, hosts: hosts, addresses: addresses, ports: ports, endpoints: endpoints, workloadSelector: selector, position: pos,
                            resolution: resolution, location: location, namedEndpoints: named)
    }

    /// An endpoint's ports, labels, weight and service account.
    static func decodeEndpointFields(_ m: YMap, kind: String) -> (ports: [String: UInt16], labels: [String: String], weight: UInt32, serviceAccount: String?) {
        let ctx = m.ctx
        var ports: [String: UInt16] = [:]
        if let pm = m["ports"]?.mapping() {
            for (name, v) in pm.allPairs() { if let n = v.int(in: 1...65535) { ports[name] = UInt16(n) } }
        }
        let labels = m["labels"]?.stringMap() ?? [:]
        var weight: UInt32 = 1
        if let w = m["weight"], let v = w.int(in: 0...Int(UInt32.max)) {
            if v == 0 {
                ctx.error("WE002", w.node, "\(w.path) must be ≥ 1 (Istio treats 0 as unset; remove the endpoint to send it no traffic)")
            }
            weight = UInt32(v)
        }
        let sa = m["serviceAccount"]?.string()
        m.finish(kind: kind, istioFields: ["network", "locality"])
        return (ports, labels, weight, sa)
    }

    static func decodeWorkloadSpec(_ m: YMap, kind: String) -> WorkloadSpec? {
        let ctx = m.ctx
        var address: IPAddress?
        if let a = m.required("address"), let s = a.string() {
            address = IPAddress(s)
            if address == nil {
                ctx.error("WE001", a.node, "\(a.path) \"\(s)\" is not an IPv4 or IPv6 address (a DNS name needs resolution DNS or DNS_ROUND_ROBIN)")
            }
        }
        let f = decodeEndpointFields(m, kind: kind)
        guard let address else { return nil }
        return WorkloadSpec(address: address, ports: f.ports, labels: f.labels, weight: f.weight, serviceAccount: f.serviceAccount)
    }

    static func decodeWorkloadEntry(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> WorkloadEntry? {
        guard let w = decodeWorkloadSpec(spec, kind: "WorkloadEntry") else { return nil }
        let cgroup = meta.annotations["weft.io/cgroup"]
        if let cg = cgroup, cg.hasPrefix("/") || cg.split(separator: "/").contains("..") || cg.isEmpty {
            spec.ctx.error("WE003", spec.node, "annotation weft.io/cgroup \"\(cg)\" must be a path relative to the agent's --cgroup, without '..'")
        }
        for key in meta.annotations.keys where key.hasPrefix("weft.io/") && key != "weft.io/cgroup" && key != "weft.io/node" {
            spec.ctx.error("WE004", spec.node, "annotation \(key) is not a weft annotation (weft.io/node, weft.io/cgroup)")
        }
        return WorkloadEntry(metadata: meta, spec: w, node: meta.annotations["weft.io/node"], cgroup: cgroup, position: pos)
    }

    static func decodeDestinationRule(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> DestinationRule? {
        let host = spec.required("host")?.string().map { HostName.qualify($0, namespace: meta.namespace) }
        let policy = spec["trafficPolicy"].flatMap { decodeTrafficPolicy($0, portLevel: true) }
        var subsets: [Subset] = []
        var seen: [String: String] = [:]
        for s in spec["subsets"]?.sequence() ?? [] {
            guard let m = s.mapping() else { continue }
            let name = m.required("name")?.string()
            let labels = m["labels"]?.stringMap() ?? [:]
            let tp = m["trafficPolicy"].flatMap { decodeTrafficPolicy($0, portLevel: true) }
            m.finish(kind: "Subset")
            guard let name else { continue }
            if !isDNSLabel(name, allowDots: false) {
                spec.ctx.error("DR007", m["name"]?.node, "\(s.path).name \"\(name)\" must be a DNS label (lowercase letters, digits, '-')")
            }
            if let other = seen[name] {
                spec.ctx.error("DR008", m["name"]?.node, "\(s.path).name \"\(name)\" is also the name of \(other)")
            }
            seen[name] = s.path
            subsets.append(Subset(name: name, labels: labels, trafficPolicy: tp))
        }
        spec.finish(kind: "DestinationRule", istioFields: ["exportTo", "workloadSelector"])
        guard let host else { return nil }
        return DestinationRule(metadata: meta, host: host, trafficPolicy: policy, subsets: subsets, position: pos)
    }

    static func decodeTrafficPolicy(_ node: YNode, portLevel: Bool) -> TrafficPolicy? {
        node.mapping().map { decodeTrafficPolicy(map: $0, portLevel: portLevel) }
    }

    /// The TrafficPolicy fields of `tp`; inside portLevelSettings the same fields sit next to
    /// `port`, which the caller has read (so `finish` does not report it).
    static func decodeTrafficPolicy(map tp: YMap, portLevel: Bool) -> TrafficPolicy {
        let ctx = tp.ctx
        var p = TrafficPolicy()
        if let l = tp["loadBalancer"]?.mapping() { p.loadBalancer = decodeLoadBalancer(l) }
        if let cp = tp["connectionPool"]?.mapping() {
            var pool = ConnectionPool()
            if let t = cp["tcp"]?.mapping() {
                pool.maxConnections = t["maxConnections"]?.int(in: 1...Int(Int32.max))
                pool.connectTimeout = t["connectTimeout"]?.duration(code: "DR009")
                t.finish(kind: "TCPSettings", istioFields: ["tcpKeepalive", "maxConnectionDuration", "idleTimeout"])
            }
            if let h = cp["http"]?.mapping() {
                pool.http1MaxPendingRequests = h["http1MaxPendingRequests"]?.int(in: 1...Int(Int32.max))
                pool.http2MaxRequests = h["http2MaxRequests"]?.int(in: 1...Int(Int32.max))
                pool.maxRequestsPerConnection = h["maxRequestsPerConnection"]?.int(in: 0...Int(Int32.max))
                pool.maxRetries = h["maxRetries"]?.int(in: 0...Int(Int32.max))
                pool.idleTimeout = h["idleTimeout"]?.duration(code: "DR009")
                if let u = h["h2UpgradePolicy"], let v = u.string() {
                    switch v {
                    case "DEFAULT", "DO_NOT_UPGRADE": pool.h2Upgrade = false
                    case "UPGRADE": pool.h2Upgrade = true
                    default: ctx.error("DR015", u.node, "\(u.path) \"\(v)\" is not an upgrade policy (DEFAULT, DO_NOT_UPGRADE, UPGRADE)")
                    }
                }
                pool.useClientProtocol = h["useClientProtocol"]?.bool()
                h.finish(kind: "HTTPSettings", istioFields: ["maxConcurrentStreams"])
            }
            cp.finish(kind: "ConnectionPoolSettings")
            p.connectionPool = pool
        }
        if let od = tp["outlierDetection"]?.mapping() {
            var o = OutlierDetection()
            o.consecutive5xxErrors = od["consecutive5xxErrors"]?.int(in: 0...Int(Int32.max))
            o.consecutiveGatewayErrors = od["consecutiveGatewayErrors"]?.int(in: 0...Int(Int32.max))
            if let legacy = od["consecutiveErrors"], let v = legacy.int(in: 0...Int(Int32.max)) {
                if od["consecutiveGatewayErrors"] != nil {
                    ctx.error("DR010", legacy.node, "\(legacy.path) is the deprecated name of consecutiveGatewayErrors; set only one")
                } else {
                    ctx.warning("DR011", legacy.node, "\(legacy.path) is deprecated; it counts 502/503/504 like consecutiveGatewayErrors, which weft reads it as")
                    o.consecutiveGatewayErrors = v
                }
            }
            o.interval = od["interval"]?.duration(code: "DR009")
            o.baseEjectionTime = od["baseEjectionTime"]?.duration(code: "DR009")
            o.maxEjectionPercent = od["maxEjectionPercent"]?.int(in: 0...100)
            od.finish(kind: "OutlierDetection", istioFields: ["splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures", "minHealthPercent"])
            p.outlierDetection = o
        }
        if let t = tp["tls"]?.mapping() {
            if let m = t.required("mode"), let s = m.string() {
                if let mode = ClientTLSMode(rawValue: s) { p.tls = mode } else if s == "SIMPLE" || s == "MUTUAL" {
                    ctx.error("FLD002", m.node, "\(m.path) \(s) is not supported by weft yet (DISABLE, ISTIO_MUTUAL)")
                } else {
                    ctx.error("DR012", m.node, "\(m.path) \"\(s)\" is not a TLS mode (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)")
                }
            }
            t.finish(kind: "ClientTLSSettings", istioFields: ["clientCertificate", "privateKey", "caCertificates", "credentialName",
                                                              "subjectAltNames", "sni", "insecureSkipVerify", "caCrl"])
        }
        if let pls = tp["portLevelSettings"] {
            if !portLevel {
                ctx.error("DR013", pls.node, "\(pls.path) is not allowed inside portLevelSettings")
            }
            for item in pls.sequence() ?? [] {
                guard let im = item.mapping() else { continue }
                var number: UInt16?
                if let pm = im.required("port")?.mapping() {
                    number = pm.required("number")?.port()
                    pm.finish(kind: "PortSelector")
                }
                let sub = decodeTrafficPolicy(map: im, portLevel: false)
                guard let number else { continue }
                if p.portLevelSettings[number] != nil {
                    ctx.error("DR014", im["port"]?.node, "\(item.path).port \(number) has settings already")
                }
                p.portLevelSettings[number] = sub
            }
        }
        tp.finish(kind: portLevel ? "TrafficPolicy" : "PortTrafficPolicy", istioFields: ["tunnel", "proxyProtocol", "retryBudget"])
        return p
    }

    static func decodeLoadBalancer(_ l: YMap) -> LoadBalancer? {
        let ctx = l.ctx
        var result: LoadBalancer?
        let simple = l["simple"]
        let hash = l["consistentHash"]
        if simple != nil && hash != nil {
            ctx.error("DR001", hash?.node, "\(l.path): set either simple or consistentHash, not both")
        }
        if let simple, let s = simple.string() {
            switch s {
            case "RANDOM", "UNSPECIFIED": result = .random
            case "ROUND_ROBIN": result = .roundRobin
            case "LEAST_REQUEST", "LEAST_CONN": result = .leastRequest // LEAST_CONN is Istio's deprecated name for it
            case "PASSTHROUGH":
                ctx.error("DR002", simple.node, "\(simple.path) PASSTHROUGH is not supported by weft (supported: RANDOM, ROUND_ROBIN, LEAST_REQUEST)")
            default:
                ctx.error("DR002", simple.node, "\(simple.path) \"\(s)\" is not a load balancer (RANDOM, ROUND_ROBIN, LEAST_REQUEST, PASSTHROUGH)")
            }
        }
        if let hash, let h = hash.mapping() {
            var size = LoadBalancer.defaultMaglevTableSize
            let useSourceIp = h["useSourceIp"]?.bool()
            var key: LoadBalancer.HashKey?
            if let name = h["httpHeaderName"]?.string() { key = .header(name.lowercased()) }
            if let q = h["httpQueryParameterName"]?.string() { key = .queryParameter(q) }
            if let c = h["httpCookie"]?.mapping() {
                let name = c["name"]?.string()
                if name == nil { ctx.error("DR003", c.node, "\(c.path).name is required") }
                let ttl = c["ttl"]?.duration(code: "DR009")
                let path = c["path"]?.string()
                c.finish(kind: "HTTPCookie", istioFields: ["attributes"])
                if let name { key = .cookie(name: name, ttl: ttl, path: path) }
            }
            let keys = [useSourceIp == true, h["httpHeaderName"] != nil, h["httpQueryParameterName"] != nil, h["httpCookie"] != nil]
            if keys.filter({ $0 }).count > 1 {
                ctx.error("DR003", hash.node, "\(hash.path): set one of useSourceIp, httpHeaderName, httpCookie, httpQueryParameterName")
            } else if useSourceIp != true && key == nil {
                ctx.error("DR003", hash.node, "\(hash.path) needs a hash key: useSourceIp, httpHeaderName, httpCookie or httpQueryParameterName")
            }
            if let mg = h["maglev"]?.mapping() {
                if let t = mg["tableSize"], let v = t.int(in: 1...5_000_010) {
                    if !isPrime(v) {
                        ctx.error("DR004", t.node, "\(t.path) must be a prime (got \(v)); e.g. 16381, 65521, 131071")
                    } else if v > LoadBalancer.maxMaglevTableSize {
                        ctx.error("DR004", t.node, "\(t.path) \(v) is larger than weft supports (at most \(LoadBalancer.maxMaglevTableSize))")
                    } else {
                        size = v
                    }
                }
                mg.finish(kind: "MagLev")
            }
            h.finish(kind: "ConsistentHashLB", istioFields: ["ringHash", "minimumRingSize"])
            if useSourceIp == true { result = .maglev(tableSize: size) } else if let key { result = .requestHash(key) }
        }
        l.finish(kind: "LoadBalancerSettings", istioFields: ["localityLbSetting", "warmupDurationSecs", "warmup"])
        return result
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        if n < 4 { return true }
        if n % 2 == 0 { return false }
        var d = 3
        while d * d <= n {
            if n % d == 0 { return false }
            d += 2
        }
        return true
    }
}

extension Character {
    fileprivate var isLetterOrNumber: Bool { isLetter || isNumber }
}
