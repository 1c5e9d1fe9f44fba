/// WeftIdentity: workload identities (SPIFFE IDs), the certificate authority that vouches
/// for them, and the certificates it mints. Knows nothing of the network.

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, Istio's identity form.
/// Parsing is exact: one form, no normalisation, no percent-decoding, nothing else
/// accepted — a verifier compares these byte for byte.
public struct SpiffeID: Hashable, Sendable, CustomStringConvertible {
    public let trustDomain: String
    public let namespace: String
    public let serviceAccount: String

    /// Trust domain: lowercase letters, digits, `.`, `-`, `_` (the SPIFFE spec's charset).
    public static func isValidTrustDomain(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 255 && s.utf8.allSatisfy { c in
            (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x2d || c == 0x5f
        }
    }

    /// Path segments: letters, digits, `.`, `-`, `_` (Kubernetes names fit; `..` and `.` do not).
    static func isValidSegment(_ s: String) -> Bool {
        !s.isEmpty && s != "." && s != ".." && s.utf8.allSatisfy { c in
            (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x2d || c == 0x5f
        }
    }

    /// An identity, if every part is valid.
    public init?(trustDomain: String, namespace: String, serviceAccount: String) {
        guard Self.isValidTrustDomain(trustDomain), Self.isValidSegment(namespace), Self.isValidSegment(serviceAccount) else { return nil }
        self.trustDomain = trustDomain
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }

    /// Parses exactly `spiffe://TD/ns/NS/sa/SA`.
    public init?(uri: String) {
        let prefix = "spiffe://"
        guard uri.hasPrefix(prefix) else { return nil }
        let parts = uri.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 5, parts[1] == "ns", parts[3] == "sa" else { return nil }
        self.init(trustDomain: parts[0], namespace: parts[2], serviceAccount: parts[4])
    }

    /// The URI form.
    public var uri: String { "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)" }
    public var description: String { uri }
}
