/// Which service ports need the agent's L7 proxy, decided once here so the kernel's
/// capture flag and the proxy's route tables can never disagree.
extension ServicePort {
    /// Istio protocols the proxy parses as HTTP (HTTP/1.1 or HTTP/2, gRPC included).
    public var isHTTP: Bool {
        switch protocolName.uppercased() {
        case "HTTP", "HTTP2", "GRPC", "GRPC-WEB": return true
        default: return false
        }
    }

    /// Istio protocols whose endpoints are spoken to in HTTP/2 whatever the client spoke.
    public var speaksHTTP2: Bool {
        switch protocolName.uppercased() {
        case "HTTP2", "GRPC", "GRPC-WEB": return true
        default: return false
        }
    }
}

extension Snapshot {
    /// The VirtualService that routes a service: the one naming one of its hosts
    /// (VS022 keeps it unique per host), or one whose wildcard host covers it.
    public func virtualService(for service: ServiceEntry) -> VirtualService? {
        for host in service.hosts {
            if let vs = virtualServices.first(where: { $0.hosts.contains(host) }) { return vs }
        }
        return virtualServices.first { vs in
            vs.hosts.contains { pattern in service.hosts.contains { HostName.matches(pattern: pattern, host: $0) } }
        }
    }

    /// Whether TCP connections to `port` of `service` go through the agent's proxy: when a
    /// VirtualService routes it (http routes on an HTTP port, tcp routes on any TCP port)
    /// or a DestinationRule sets what only a proxy can enforce (connection pools, outlier
    /// detection, LEAST_REQUEST, hashing on request attributes). Everything else stays on
    /// the kernel's L4 fast path.
    public func needsProxy(_ service: ServiceEntry, port: ServicePort) -> Bool {
        if port.isUDP { return false }
        if let vs = virtualService(for: service) {
            if port.isHTTP && !vs.http.isEmpty { return true }
            if !vs.tcp.isEmpty { return true }
        }
        if let dr = destinationRule(for: service) {
            let policies = dr.allPolicies
            for p in policies {
                let forPort = p.portLevelSettings[port.number]
                if p.connectionPool != nil || p.outlierDetection != nil || p.loadBalancer?.needsProxy == true
                    || forPort?.connectionPool != nil || forPort?.outlierDetection != nil || forPort?.loadBalancer?.needsProxy == true {
                    return true
                }
            }
        }
        return needsTunnel(service, port: port)
    }

    /// Automatic mTLS: the port has a meshed endpoint (a workload bound to a node) whose
    /// PeerAuthentication does not say DISABLE, and its DestinationRule does not say tls
    /// DISABLE for it; or some policy of the service says ISTIO_MUTUAL (then a plaintext
    /// endpoint must not be reached in the kernel).
    public func needsTunnel(_ service: ServiceEntry, port: ServicePort) -> Bool {
        if port.isUDP { return false }
        let dr = destinationRule(for: service)
        let policies = dr?.allPolicies ?? []
        if policies.contains(where: { ($0.portLevelSettings[port.number]?.tls ?? $0.tls) == .istioMutual }) { return true }
        let top = dr?.trafficPolicy.flatMap { $0.portLevelSettings[port.number]?.tls ?? $0.tls }
        if top == .disable { return false }
        return backends(of: service, port: port).contains(where: acceptsMutualTLS)
    }
}

extension DestinationRule {
    /// The rule's traffic policy and its subsets' (each may carry port-level overrides).
    var allPolicies: [TrafficPolicy] { ([trafficPolicy] + subsets.map(\.trafficPolicy)).compactMap { $0 } }
}
