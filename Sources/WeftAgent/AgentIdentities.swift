import WeftConfig
import WeftIdentity
import WeftProxy

/// The tunnel's view of this node's identities: the workloads' certificates, and the
/// trust bundle peers are verified against.
struct AgentIdentities: TunnelIdentities {
    let certificates: WorkloadCertificates
    let bundle: TrustBundle

    func credentials(for workload: ResourceID) -> TunnelCredentials? {
        certificates.credentials(for: "\(workload.namespace)/\(workload.name)").map {
            TunnelCredentials(identity: $0.identity.uri, chainDER: $0.chainDER, privateKeyPEM: $0.privateKeyPEM, serial: $0.serial)
        }
    }

    func verify(chainDER: [[UInt8]]) async throws -> String {
        try await bundle.verify(chainDER: chainDER).uri
    }
}
