import Crypto
import Foundation
import SwiftASN1
import X509
#if canImport(Glibc)
import Glibc
#endif

/// An identity or CA problem, one line.
public struct IdentityError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

/// A certificate authority: a root (`weft ca init`, or the agent's own on first start) or a
/// node's intermediate issued by one (`weft ca issue-node`). Keys are ECDSA P-256.
public struct CertificateAuthority {
    /// This CA's certificate.
    public let certificate: Certificate
    /// Its issuers up to, not including, the root (empty for a root).
    public let issuers: [Certificate]
    let key: P256.Signing.PrivateKey
    /// The node it mints for (nil for a mesh root): it mints only for that node's
    /// workloads, and says so in its certificate (see `boundNode`).
    public let node: String?

    /// How a CA certificate names the node it is bound to: a URI SAN `urn:weft:node:NAME`.
    /// Peers accept a leaf only for identities of workloads of the node its issuer names,
    /// so one node's CA cannot speak for another node's workloads.
    static let nodeURIPrefix = "urn:weft:node:"

    /// The node a CA certificate is bound to, if any.
    public static func boundNode(of certificate: Certificate) -> String? {
        guard let sans = try? certificate.extensions.subjectAlternativeNames else { return nil }
        for case .uniformResourceIdentifier(let uri) in sans where uri.hasPrefix(nodeURIPrefix) {
            return String(uri.dropFirst(nodeURIPrefix.count))
        }
        return nil
    }

    /// A new self-signed root for `trustDomain`: the mesh's (`weft ca init`), or, bound to
    /// `node`, the CA an agent without --ca makes for its own node.
    public static func createRoot(trustDomain: String, node: String? = nil, validity: TimeInterval = 10 * 365 * 86400,
                                  now: Date = Date()) throws -> CertificateAuthority {
        guard SpiffeID.isValidTrustDomain(trustDomain) else { throw IdentityError("trust domain \"\(trustDomain)\" is not valid (lowercase letters, digits, . - _)") }
        if let node { try validateNodeName(node) }
        let key = P256.Signing.PrivateKey()
        let cert = try caCertificate(key: key, name: "weft root CA \(trustDomain)\(node.map { " for node \($0)" } ?? "")",
                                     pathLength: node == nil ? 1 : 0, node: node, notBefore: now.addingTimeInterval(-300),
                                     notAfter: now.addingTimeInterval(validity), issuer: nil)
        return CertificateAuthority(certificate: cert, issuers: [], key: key, node: node)
    }

    static func validateNodeName(_ node: String) throws {
        guard !node.isEmpty, node.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw IdentityError("node name \"\(node)\" is not valid: use the agent's --node, printable ASCII without spaces")
        }
    }

    /// An intermediate for `node`, signed by this (root) CA.
    public func issueNode(_ node: String, validity: TimeInterval = 365 * 86400, now: Date = Date()) throws -> CertificateAuthority {
        guard self.node == nil else { throw IdentityError("a node CA cannot issue another node CA; use the root (weft ca init)") }
        try Self.validateNodeName(node)
        let key = P256.Signing.PrivateKey()
        let cert = try Self.caCertificate(key: key, name: "weft node CA \(node)", pathLength: 0, node: node, notBefore: now.addingTimeInterval(-300),
                                          notAfter: min(now.addingTimeInterval(validity), certificate.notValidAfter), issuer: self)
        return CertificateAuthority(certificate: cert, issuers: [certificate] + issuers, key: key, node: node)
    }

    /// A CA certificate for `key`: self-signed when `issuer` is nil, else signed by it;
    /// bound to `node` if given.
    static func caCertificate(key: P256.Signing.PrivateKey, name: String, pathLength: Int, node: String?, notBefore: Date, notAfter: Date,
                              issuer: CertificateAuthority?) throws -> Certificate {
        let subject = try DistinguishedName {
            OrganizationName("weft")
            CommonName(name)
        }
        let authorityKeyID = try issuer?.certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: issuer?.certificate.subject ?? subject, subject: subject,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: pathLength))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
                if let authorityKeyID { AuthorityKeyIdentifier(keyIdentifier: authorityKeyID) }
                if let node { SubjectAlternativeNames([.uniformResourceIdentifier(nodeURIPrefix + node)]) }
            },
            issuerPrivateKey: .init(issuer?.key ?? key))
    }

    /// A workload certificate: empty subject, the SPIFFE ID as its only (critical) URI SAN,
    /// for TLS client and server use, valid `ttl` from `now`.
    public func issueWorkload(_ id: SpiffeID, publicKey: P256.Signing.PublicKey, ttl: TimeInterval, now: Date = Date()) throws -> Certificate {
        try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(publicKey),
            notValidBefore: now.addingTimeInterval(-60), notValidAfter: min(now.addingTimeInterval(ttl), certificate.notValidAfter),
            issuer: certificate.subject, subject: DistinguishedName(),
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                // RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
                Critical(SubjectAlternativeNames([.uniformResourceIdentifier(id.uri)]))
                AuthorityKeyIdentifier(keyIdentifier: try certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(key))
    }

    // MARK: files

    /// `DIR/ca.pem` (this CA), `DIR/chain.pem` (its issuers), `DIR/ca.key` (mode 0600),
    /// `DIR/node` for a node CA. Written to temporary names and renamed: never half there.
    public func save(to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // Each file is created new, exclusively, with its final mode (O_CREAT|O_EXCL, mode
        // given to open): a key is never, not even for an instant, a file others may read,
        // nor a file someone else made first (a planted symlink or a stale temporary).
        func write(_ name: String, _ text: String, mode: mode_t) throws {
            let tmp = "\(dir)/.\(name).tmp"
            unlink(tmp)
            let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
            if fd < 0 { throw IdentityError("cannot create \(tmp): \(String(cString: strerror(errno)))") }
            let bytes = Array(text.utf8)
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            let synced = fsync(fd) == 0
            close(fd)
            guard written == bytes.count, synced else {
                unlink(tmp)
                throw IdentityError("cannot write \(tmp): \(String(cString: strerror(errno)))")
            }
            if rename(tmp, "\(dir)/\(name)") != 0 { throw IdentityError("cannot rename \(tmp) into place: errno \(errno)") }
        }
        try write("ca.key", key.pemRepresentation, mode: 0o600)
        try write("ca.pem", try certificate.serializeAsPEM().pemString + "\n", mode: 0o644)
        try write("chain.pem", try issuers.map { try $0.serializeAsPEM().pemString + "\n" }.joined(), mode: 0o644)
        if let node { try write("node", node + "\n", mode: 0o644) }
    }

    /// Loads what `save` wrote; refuses a key readable by others and a key that does not
    /// belong to the certificate.
    public static func load(from dir: String) throws -> CertificateAuthority {
        func read(_ name: String) throws -> String {
            guard let d = FileManager.default.contents(atPath: "\(dir)/\(name)"), let s = String(data: d, encoding: .utf8) else {
                throw IdentityError("\(dir)/\(name) is missing or unreadable")
            }
            return s
        }
        var st = stat()
        if stat("\(dir)/ca.key", &st) == 0, st.st_mode & 0o077 != 0 {
            throw IdentityError("\(dir)/ca.key is readable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        let key = try P256.Signing.PrivateKey(pemRepresentation: try read("ca.key"))
        let cert = try Certificate(pemEncoded: try read("ca.pem"))
        guard cert.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw IdentityError("\(dir)/ca.key does not belong to \(dir)/ca.pem")
        }
        let chainText = (try? read("chain.pem")) ?? ""
        let issuers = try PEMDocument.parseMultiple(pemString: chainText).map { try Certificate(pemDocument: $0) }
        let node = (try? read("node"))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if let node, let bound = boundNode(of: cert), bound != node {
            throw IdentityError("\(dir)/ca.pem is bound to node \(bound), but \(dir)/node says \(node)")
        }
        return CertificateAuthority(certificate: cert, issuers: issuers, key: key, node: node ?? boundNode(of: cert))
    }

    /// Whether its certificate names the node it mints for (CAs made before weft bound
    /// them do not, and peers refuse what they issue).
    public var isBoundToItsNode: Bool {
        node != nil && Self.boundNode(of: certificate) == node
    }
}
