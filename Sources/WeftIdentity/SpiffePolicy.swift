import SwiftASN1
import X509

/// The chain policy for a workload certificate: the leaf names exactly one identity, as
/// its only URI SAN, in the expected trust domain — compared as a parsed SPIFFE ID, never
/// by pattern. (It also claims the critical SAN extension, which RFC5280Policy leaves to
/// others.) Run together with RFC5280Policy for validity, signatures and CA constraints.
public struct SpiffePolicy: VerifierPolicy, Sendable {
    public let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.subjectAlternativeName]
    let trustDomain: String

    /// Accepts identities of `trustDomain` only.
    public init(trustDomain: String) {
        self.trustDomain = trustDomain
    }

    /// The identity a leaf certificate names, if it names exactly one well-formed one and
    /// nothing else.
    public static func identity(of leaf: Certificate) -> SpiffeID? {
        guard let sans = try? leaf.extensions.subjectAlternativeNames else { return nil }
        let all = Array(sans)
        guard all.count == 1, case .uniformResourceIdentifier(let uri) = all[0] else { return nil }
        return SpiffeID(uri: uri)
    }

    public mutating func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        guard let id = Self.identity(of: chain.leaf) else {
            return .failsToMeetPolicy(reason: "the leaf certificate does not name exactly one SPIFFE identity")
        }
        let expected = trustDomain
        guard id.trustDomain == expected else {
            return .failsToMeetPolicy(reason: "identity \(id) is not in trust domain \(expected)")
        }
        return .meetsPolicy
    }
}
