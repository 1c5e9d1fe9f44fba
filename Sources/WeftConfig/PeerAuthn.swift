/// PeerAuthentication as Istio resolves it for one workload port: the workload's own
/// policy (selector matching its labels, port-level mode first), else its namespace's,
/// else the mesh's (root namespace, no selector), else PERMISSIVE. UNSET at any level
/// means "ask the next one up".
public struct EffectiveMTLS: Hashable, Sendable, CustomStringConvertible {
    /// STRICT, PERMISSIVE or DISABLE (never UNSET).
    public var mode: MTLSMode
    /// The policy that decided, nil for the default.
    public var policy: ResourceID?
    /// Whether a portLevelMtls entry decided.
    public var portLevel = false

    public var description: String {
        guard let p = policy else { return "\(mode.rawValue) (default: no PeerAuthentication applies)" }
        return "\(mode.rawValue) (PeerAuthentication \(p.namespace)/\(p.name)\(portLevel ? ", port level" : ""))"
    }
}

extension Snapshot {
    /// The workload-scope PeerAuthentications selecting `workload`, first by name (Istio
    /// takes the oldest; weft has no creation time, so validation warns about overlaps).
    public func workloadPeerAuthentications(for workload: WorkloadEntry) -> [PeerAuthentication] {
        peerAuthentications.filter { pa in
            pa.metadata.namespace == workload.metadata.namespace
                && pa.selector.map { sel in sel.allSatisfy { workload.spec.labels[$0.key] == $0.value } } == true
        }
    }

    /// The effective mTLS mode of `port` of `workload` (nil port: the workload's ports
    /// without a port-level setting).
    public func mtls(for workload: WorkloadEntry, port: UInt16?) -> EffectiveMTLS {
        func id(_ pa: PeerAuthentication) -> ResourceID { Resource.peerAuthentication(pa).id }
        if let pa = workloadPeerAuthentications(for: workload).first {
            if let port, let m = pa.portLevelMtls[port], m != .unset {
                return EffectiveMTLS(mode: m, policy: id(pa), portLevel: true)
            }
            if let m = pa.mode, m != .unset { return EffectiveMTLS(mode: m, policy: id(pa)) }
        }
        for ns in [workload.metadata.namespace, rootNamespace] {
            if let pa = peerAuthentications.first(where: { $0.metadata.namespace == ns && $0.selector == nil }),
               let m = pa.mode, m != .unset {
                return EffectiveMTLS(mode: m, policy: id(pa))
            }
        }
        return EffectiveMTLS(mode: .permissive, policy: nil)
    }

    /// Whether `backend` must be reached through the tunnel by automatic mTLS: it is a
    /// meshed workload whose port does not say DISABLE (Istio's auto-mTLS reads the
    /// destination's PeerAuthentication the same way).
    public func acceptsMutualTLS(_ backend: ServiceBackend) -> Bool {
        guard backend.node != nil else { return false }
        guard let id = backend.workload, case .workloadEntry(let we)? = resources[id] else { return true }
        return mtls(for: we, port: backend.port).mode != .disable
    }
}
