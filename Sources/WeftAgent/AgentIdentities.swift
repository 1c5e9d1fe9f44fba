import Foundation
import WeftConfig
import WeftIdentity
import WeftProxy

/// The tunnel's view of this node's identities: the workloads' certificates, and the
/// trust bundle peers are verified against (replaced as the operator rotates roots).
final class AgentIdentities: TunnelIdentities, @unchecked Sendable {
    let certificates: WorkloadCertificates
    private let lock = NSLock()
    private var bundle: TrustBundle

    init(certificates: WorkloadCertificates, bundle: TrustBundle) {
        self.certificates = certificates
        self.bundle = bundle
    }

    var trustBundle: TrustBundle {
        get { lock.withLock { bundle } }
        set { lock.withLock { bundle = newValue } }
    }

    func credentials(for workload: ResourceID) -> TunnelCredentials? {
        certificates.credentials(for: "\(workload.namespace)/\(workload.name)").map {
            TunnelCredentials(chainDER: $0.chainDER, privateKeyPEM: $0.privateKeyPEM, serial: $0.serial)
        }
    }

    func serial(for workload: ResourceID) -> String? {
        certificates.serial(for: "\(workload.namespace)/\(workload.name)")
    }

    func verify(chainDER: [[UInt8]]) async throws -> VerifiedPeer {
        let v = try await trustBundle.verify(chainDER: chainDER)
        return VerifiedPeer(identity: v.id.uri, node: v.node, notAfter: v.notAfter)
    }
}
