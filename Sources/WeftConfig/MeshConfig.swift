/// weft.io/v1alpha1 MeshConfig: the mesh-wide settings Istio keeps in its meshConfig
/// (which is not a resource there). At most one, in the mesh root namespace.
public struct MeshConfig: Hashable, Sendable, Codable {
    /// Metadata.
    public var metadata: Metadata
    /// outboundTrafficPolicy.mode.
    public var outboundTrafficPolicy: OutboundTrafficPolicy
    /// Where the resource starts.
    public var position: SourcePosition
}

/// Istio's meshConfig.outboundTrafficPolicy.mode: what a workload may connect to
/// besides the mesh's services.
public enum OutboundTrafficPolicy: String, Hashable, Sendable, Codable, CaseIterable {
    /// Anything (Istio's default).
    case allowAny = "ALLOW_ANY"
    /// Only addresses the registry knows (ServiceEntry addresses and endpoints,
    /// WorkloadEntries, resolved DNS services); anything else is refused at connect().
    case registryOnly = "REGISTRY_ONLY"
}

extension ResourceDecoder {
    static let weftVersions = ["weft.io/v1alpha1"]

    /// Istio's meshConfig fields weft does not take (yet): named as such when set.
    static let meshConfigIstioFields: Set<String> = [
        "accessLogFile", "accessLogEncoding", "accessLogFormat", "defaultConfig", "enableTracing", "defaultProviders",
        "extensionProviders", "trustDomain", "trustDomainAliases", "rootNamespace", "enableAutoMtls", "localityLbSetting",
        "defaultDestinationRuleExportTo", "defaultServiceExportTo", "defaultVirtualServiceExportTo", "connectTimeout",
        "tcpKeepalive", "h2UpgradePolicy", "outlierDetection", "serviceSettings", "dnsRefreshRate", "inboundTrafficPolicy",
    ]

    static func decodeMeshConfig(_ spec: YMap, meta: Metadata, pos: SourcePosition) -> MeshConfig? {
        let ctx = spec.ctx
        var mode = OutboundTrafficPolicy.allowAny
        if let otp = spec["outboundTrafficPolicy"]?.mapping() {
            if let m = otp["mode"], let s = m.string() {
                if let v = OutboundTrafficPolicy(rawValue: s) { mode = v } else {
                    ctx.error("MC001", m.node, "\(m.path) \"\(s)\" is not a mode (ALLOW_ANY, REGISTRY_ONLY)")
                }
            }
            otp.finish(kind: "OutboundTrafficPolicy", istioFields: ["egressProxy"])
        }
        spec.finish(kind: "MeshConfig", istioFields: meshConfigIstioFields)
        return MeshConfig(metadata: meta, outboundTrafficPolicy: mode, position: pos)
    }
}

extension Snapshot {
    /// The mesh's outbound traffic policy (ALLOW_ANY without a MeshConfig).
    public var outboundTrafficPolicy: OutboundTrafficPolicy {
        meshConfig?.outboundTrafficPolicy ?? .allowAny
    }
}
