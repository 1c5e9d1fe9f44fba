import Foundation
import SwiftASN1
import X509

/// The roots a peer's certificate may chain to, and the trust domain its identity must be
/// in. Several roots may be trusted at once: that is what lets a CA be rotated in three
/// steps (trust the new root everywhere, switch signers, stop trusting the old root).
public struct TrustBundle: Sendable {
    public let trustDomain: String
    public let roots: [Certificate]

    public init(trustDomain: String, roots: [Certificate]) {
        self.trustDomain = trustDomain
        self.roots = roots
    }

    /// Same trust domain and the same roots.
    public func sameTrust(as other: TrustBundle) -> Bool {
        trustDomain == other.trustDomain && Set(roots) == Set(other.roots)
    }

    /// Verifies a chain as presented in a TLS handshake (DER, leaf first), now: it
    /// must build to one of the roots (signatures, validity, CA constraints: RFC 5280) and
    /// the leaf must name exactly one SPIFFE identity in the trust domain. Returns that
    /// identity, the node the leaf's issuer is bound to (nil: a CA bound to no node,
    /// which may not speak for any node's workloads) and when the first certificate of
    /// the chain expires, or throws the reason in one line.
    public func verify(chainDER: [[UInt8]]) async throws -> (id: SpiffeID, node: String?, notAfter: Date) {
        guard let first = chainDER.first else { throw IdentityError("the peer presented no certificate") }
        let leaf: Certificate
        let intermediates: [Certificate]
        do {
            leaf = try Certificate(derEncoded: first)
            intermediates = try chainDER.dropFirst().map { try Certificate(derEncoded: $0) }
        } catch {
            throw IdentityError("the peer's certificate does not parse: \(error)")
        }
        let domain = trustDomain
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
            RFC5280Policy()
            SpiffePolicy(trustDomain: domain)
        }
        switch await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates)) {
        case .validCertificate(let chain):
            // SpiffePolicy accepted it, so it names exactly one identity.
            guard let id = SpiffePolicy.identity(of: leaf) else { throw IdentityError("the leaf names no SPIFFE identity") }
            // The chain as built, leaf first: the next one is what signed the leaf.
            return (id, chain.count > 1 ? CertificateAuthority.boundNode(of: chain[1]) : nil,
                    chain.map(\.notValidAfter).min() ?? leaf.notValidAfter)
        case .couldNotValidate(let failures):
            let reason = failures.first.map { "\($0.policyFailureReason)" } ?? "no chain to a trusted root"
            throw IdentityError("certificate refused: \(reason)")
        }
    }
}

/// What a TLS endpoint presents for one workload: its certificate chain and key.
public struct WorkloadCredentials: Sendable {
    public var identity: SpiffeID
    /// DER, leaf first, then the issuers up to (not including) the root.
    public var chainDER: [[UInt8]]
    /// PKCS#8 PEM.
    public var privateKeyPEM: String
    /// Changes whenever the certificate does (renewal).
    public var serial: String
}

extension WorkloadCertificates {
    /// The credentials of one workload (`namespace/name`), if it has a certificate.
    public func credentials(for workload: String) -> WorkloadCredentials? {
        guard let (e, ca) = entry(workload) else { return nil }
        do {
            var der: [[UInt8]] = []
            for c in [e.certificate, ca.certificate] + ca.issuers.filter({ !$0.isSelfSigned }) {
                var s = DER.Serializer()
                try s.serialize(c)
                der.append(s.serializedBytes)
            }
            return WorkloadCredentials(identity: e.id, chainDER: der, privateKeyPEM: e.key.pemRepresentation,
                                       serial: e.certificate.serialNumber.description)
        } catch {
            return nil
        }
    }

    /// The root this node's CA chains to (its own certificate, for a root CA).
    public var caRoot: Certificate { ca.root }

    /// What this node trusts: its CA's root, plus the roots in `extraRootsFile`, plus (cluster
    /// mode) the roots other nodes registered.
    public func trustBundle(trustDomain: String, extraRootsFile: String?, nodeRoots: NodeRoots = NodeRoots()) throws -> TrustBundle {
        let own = caRoot
        var roots = [own]
        for r in (try extraRootsFile.map { try TrustBundle.roots(pemFile: $0) } ?? []) + nodeRoots.roots where !roots.contains(r) {
            roots.append(r)
        }
        return TrustBundle(trustDomain: trustDomain, roots: roots)
    }
}

extension CertificateAuthority {
    /// The root it chains to (itself, for a root CA).
    public var root: Certificate { issuers.last ?? certificate }
}

extension TrustBundle {
    /// Roots from a PEM file (the operator's extra trusted roots, e.g. a CA being rotated
    /// in or out). Every certificate in it must be a CA.
    public static func roots(pemFile path: String) throws -> [Certificate] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw IdentityError("trust bundle \(path) is missing or unreadable")
        }
        return try roots(pem: text, source: "trust bundle \(path)")
    }

    /// CA certificates from PEM text; `source` names it in errors.
    public static func roots(pem text: String, source: String) throws -> [Certificate] {
        let docs: [PEMDocument]
        do {
            docs = try PEMDocument.parseMultiple(pemString: text)
        } catch {
            throw IdentityError("\(source) is not PEM: \(error)")
        }
        return try docs.enumerated().map { i, doc in
            guard let c = try? Certificate(pemDocument: doc) else { throw IdentityError("\(source): entry \(i + 1) is not a certificate") }
            guard case .isCertificateAuthority? = try? c.extensions.basicConstraints else {
                throw IdentityError("\(source): entry \(i + 1) is not a CA certificate")
            }
            return c
        }
    }
}

extension Certificate {
    var isSelfSigned: Bool { issuer == subject }
}

/// Cluster mode: the CA roots other nodes registered. A root is taken only if it is bound
/// to the node that registered it (its URI SAN `urn:weft:node:NAME`), so what it signs can
/// speak for that node's workloads and no other's; a root bound to no node is refused (it
/// could sign node CAs for every node). A node whose registration is gone stays trusted
/// for a while (`prune`): a node cut off from etcd, not from its peers, keeps working.
public struct NodeRoots: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        var roots: [Certificate]
        var goneSince: Date?
    }

    var entries: [String: Entry] = [:]

    public init() {}

    /// Every root currently trusted through registrations.
    public var roots: [Certificate] { entries.keys.sorted().flatMap { entries[$0]!.roots } }

    /// Takes `node`'s registered roots (PEM); returns why any was refused.
    public mutating func register(node: String, pems: [String]) -> [String] {
        var taken: [Certificate] = []
        var problems: [String] = []
        for (i, pem) in pems.enumerated() {
            do {
                let certificates = try TrustBundle.roots(pem: pem, source: "node \(node)'s registered root \(i + 1)")
                if certificates.isEmpty { problems.append("node \(node)'s registered root \(i + 1) holds no certificate") }
                for c in certificates {
                    let bound = CertificateAuthority.boundNode(of: c)
                    if bound == node { taken.append(c) } else {
                        problems.append("node \(node) registered a CA root bound to \(bound.map { "node \($0)" } ?? "no node"); refused")
                    }
                }
            } catch {
                problems.append("\(error)")
            }
        }
        entries[node] = Entry(roots: taken, goneSince: nil)
        return problems
    }

    /// `node`'s registration is gone (its lease expired, or it left).
    public mutating func gone(node: String, at now: Date = Date()) {
        if entries[node]?.goneSince == nil { entries[node]?.goneSince = now }
    }

    /// Drops nodes gone for longer than `grace` seconds.
    public mutating func prune(grace: TimeInterval, now: Date = Date()) {
        entries = entries.filter { _, e in e.goneSince.map { now.timeIntervalSince($0) <= grace } ?? true }
    }
}

extension NodeRoots {
    /// The nodes with an entry (registered now, or gone within the grace period).
    public var nodes: [String] { entries.keys.sorted() }
}

extension TrustBundle {
    /// The roots bound to `node`, as PEM: what a node registers in cluster mode (its own
    /// CA's root, and during a rotation the next one, put in its --trust-bundle first).
    public func pemRoots(boundTo node: String) -> [String] {
        roots.filter { CertificateAuthority.boundNode(of: $0) == node }.compactMap { try? $0.serializeAsPEM().pemString }
    }
}
