import Crypto
import Foundation
import X509

/// What `weft cert show` reports of one workload's certificate.
public struct CertificateInfo: Codable, Sendable {
    /// `namespace/name` of the WorkloadEntry.
    public var workload: String
    public var identity: String
    public var serial: String
    public var notBefore: Date
    public var notAfter: Date
    /// Leaf first, then its issuers up to and including the root, PEM.
    public var chainPEM: String
}

/// The certificates of this node's workloads: minted by the node's CA, renewed at half
/// life (a new key each time), replaced when a workload's identity changes, dropped when
/// the workload goes. Thread-safe.
public final class WorkloadCertificates: @unchecked Sendable {
    struct Entry {
        var id: SpiffeID
        var key: P256.Signing.PrivateKey
        var certificate: Certificate
        /// The certificate's serial as text, formatted once: the tunnel asks for it on every
        /// request stream it opens (to notice a renewal), and formatting it makes a String
        /// per byte of the serial.
        var serial: String
        /// When it was minted (its notBefore is backdated for clock skew, so the half
        /// life is measured from here).
        var issued: Date
        /// The CA that signed it: the chain it is presented with, even after the signer
        /// switched and until it is re-minted.
        var signer: CertificateAuthority
    }

    private var authority: CertificateAuthority
    private let ttl: TimeInterval
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]

    /// One workload's entry and the CA that signed it, under the lock.
    func entry(_ workload: String) -> (Entry, CertificateAuthority)? {
        lock.lock()
        defer { lock.unlock() }
        return entries[workload].map { ($0, $0.signer) }
    }

    /// The CA that signs (switched during a CA rotation).
    public var ca: CertificateAuthority {
        lock.lock()
        defer { lock.unlock() }
        return authority
    }

    /// Switches signer (step two of a CA rotation): every certificate is re-minted by
    /// `ca` at the next refresh; until then the old ones stay in use (a workload is never
    /// without a certificate). Returns false when `ca` is the one already in use.
    public func replaceAuthority(_ ca: CertificateAuthority) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard ca.certificate != authority.certificate else { return false }
        authority = ca
        return true
    }

    /// The serial of a workload's current certificate (cheap: no encoding).
    public func serial(for workload: String) -> String? {
        lock.lock()
        defer { lock.unlock() }
        return entries[workload]?.serial
    }

    /// `ttl`: lifetime of each workload certificate.
    public init(ca: CertificateAuthority, ttl: TimeInterval) {
        self.authority = ca
        self.ttl = ttl
    }

    /// Brings the set to `wanted` (workload key → identity) at `now`; returns how many
    /// certificates were minted.
    @discardableResult
    public func refresh(_ wanted: [String: SpiffeID], now: Date = Date()) throws -> Int {
        lock.lock()
        defer { lock.unlock() }
        var minted = 0
        for key in Array(entries.keys) where wanted[key] == nil { entries[key] = nil }
        for (workload, id) in wanted {
            if let e = entries[workload], e.id == id, e.signer.certificate == authority.certificate {
                let half = e.issued.addingTimeInterval(e.certificate.notValidAfter.timeIntervalSince(e.issued) / 2)
                if now < half { continue }
            }
            let key = P256.Signing.PrivateKey()
            let cert = try authority.issueWorkload(id, publicKey: key.publicKey, ttl: ttl, now: now)
            entries[workload] = Entry(id: id, key: key, certificate: cert, serial: cert.serialNumber.description, issued: now,
                                      signer: authority)
            minted += 1
        }
        return minted
    }

    /// Every workload's certificate, by workload.
    public func info() throws -> [CertificateInfo] {
        lock.lock()
        defer { lock.unlock() }
        return try entries.keys.sorted().map { w in
            let e = entries[w]!
            let chain = try ([e.certificate, e.signer.certificate] + e.signer.issuers).map { try $0.serializeAsPEM().pemString + "\n" }
            return CertificateInfo(workload: w, identity: e.id.uri, serial: e.serial,
                                   notBefore: e.certificate.notValidBefore, notAfter: e.certificate.notValidAfter,
                                   chainPEM: chain.joined())
        }
    }

    /// The agent's CA: the node CA in `caDir` (from `weft ca issue-node`, which must be for
    /// `node` and say so in its certificate), else the agent's own root in `stateDir/ca`,
    /// created on first start bound to `node`.
    public static func authority(caDir: String?, stateDir: String, trustDomain: String, node: String) throws -> CertificateAuthority {
        if let dir = caDir {
            let ca = try CertificateAuthority.load(from: dir)
            guard let caNode = ca.node else {
                throw IdentityError("\(dir) is a root CA; give the agent its node's CA (weft ca issue-node --node \(node))")
            }
            guard caNode == node else {
                throw IdentityError("\(dir) is the CA of node \(caNode), not of this node \(node) (--node); issue one for \(node)")
            }
            guard ca.isBoundToItsNode else {
                throw IdentityError("\(dir) was issued before node CAs named their node in the certificate, and peers refuse what it signs; issue a new one (weft ca issue-node --node \(node))")
            }
            return ca
        }
        let own = "\(stateDir)/ca"
        if FileManager.default.fileExists(atPath: "\(own)/ca.key") { return try CertificateAuthority.load(from: own) }
        let root = try CertificateAuthority.createRoot(trustDomain: trustDomain, node: node)
        try root.save(to: own)
        return root
    }
}
