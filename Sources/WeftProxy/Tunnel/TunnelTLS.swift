import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import WeftConfig

/// One workload's certificate chain and key, as the tunnel presents them.
public struct TunnelCredentials: Sendable {
    /// DER, leaf first.
    public var chainDER: [[UInt8]]
    public var privateKeyPEM: String
    /// Changes when the certificate is renewed.
    public var serial: String

    public init(chainDER: [[UInt8]], privateKeyPEM: String, serial: String) {
        self.chainDER = chainDER
        self.privateKeyPEM = privateKeyPEM
        self.serial = serial
    }
}

/// What the tunnel needs from the node's identity system (WeftIdentity, through the agent).
public protocol TunnelIdentities: Sendable {
    /// The credentials of one of this node's workloads (nil until it has a certificate).
    func credentials(for workload: ResourceID) -> TunnelCredentials?
    /// The serial of its current certificate (cheap; changes on renewal or a new signer).
    func serial(for workload: ResourceID) -> String?
    /// Verifies a peer's chain (DER, leaf first) against the trust bundle; returns the
    /// peer's SPIFFE URI, the node its issuing CA is bound to, and until when the chain is
    /// valid, or throws the reason.
    func verify(chainDER: [[UInt8]]) async throws -> VerifiedPeer
}

/// A peer whose certificate chain verified.
public struct VerifiedPeer: Sendable {
    /// Its SPIFFE URI.
    public var identity: String
    /// The node its issuing CA is bound to (nil: a CA bound to no node).
    public var node: String?
    /// When the first certificate of its chain expires.
    public var notAfter: Date

    public init(identity: String, node: String?, notAfter: Date) {
        self.identity = identity
        self.node = node
        self.notAfter = notAfter
    }
}

/// The verified identity of a TLS peer, set by the verification callback during the
/// handshake (before any application data can arrive).
final class PeerIdentity: Sendable {
    private let box = NIOLockedValueBox<(id: String?, node: String?, chain: [[UInt8]]?, checked: Bool)>((nil, nil, nil, false))
    var value: String? { box.withLockedValue { $0.id } }
    /// The node whose CA issued the peer's certificate (the peer agent's node).
    var node: String? { box.withLockedValue { $0.node } }
    /// The chain it presented (DER, leaf first), to verify again when trust changes.
    var chain: [[UInt8]]? { box.withLockedValue { $0.chain } }
    /// The peer presented a certificate and weft's verification ran (pass or fail).
    var checked: Bool { box.withLockedValue { $0.checked } }
    func set(_ id: String, node: String, chain: [[UInt8]]) { box.withLockedValue { $0.id = id; $0.node = node; $0.chain = chain } }
    func markChecked() { box.withLockedValue { $0.checked = true } }
}

/// TLS 1.3 contexts with the tunnel's ALPN, one per (role, protocol, workload
/// certificate): built once per certificate, replaced when it is renewed. Peer
/// verification is weft's own (SPIFFE over the trust bundle), through NIOSSL's custom
/// verification callback.
final class TunnelTLS: Sendable {
    let identities: TunnelIdentities
    private let contexts = NIOLockedValueBox<[String: (serial: String, context: NIOSSLContext)]>([:])

    init(identities: TunnelIdentities) {
        self.identities = identities
    }

    /// The context to present `workload`'s certificate with, as client (offering `alpn`)
    /// or server (taking either of the tunnel's protocols).
    func context(for workload: ResourceID, server: Bool, alpn: String = TunnelHTTP2.connectALPN) throws -> (NIOSSLContext, serial: String) {
        let key = "\(server ? "server" : "client \(alpn)")|\(workload.namespace)/\(workload.name)"
        // Once per tunnel connection: the cached context while the certificate is the
        // same (a serial lookup), a new one only after renewal.
        if let serial = identities.serial(for: workload), let c = contexts.withLockedValue({ $0[key] }), c.serial == serial {
            return (c.context, serial)
        }
        guard let creds = identities.credentials(for: workload) else {
            throw ProxyError("workload \(workload.namespace)/\(workload.name) has no certificate yet")
        }
        let chain = try creds.chainDER.map { NIOSSLCertificateSource.certificate(try NIOSSLCertificate(bytes: $0, format: .der)) }
        let privateKey = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(bytes: Array(creds.privateKeyPEM.utf8), format: .pem))
        var config = server ? TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: privateKey)
            : TLSConfiguration.makeClientConfiguration()
        config.certificateChain = chain
        config.privateKey = privateKey
        config.minimumTLSVersion = .tlsv13
        // Both sides must present a certificate; checking it is the callback's job.
        config.certificateVerification = .noHostnameVerification
        config.applicationProtocols = server ? [TunnelHTTP2.requestsALPN, TunnelHTTP2.connectALPN] : [alpn]
        let context = try NIOSSLContext(configuration: config)
        contexts.withLockedValue { $0[key] = (creds.serial, context) }
        return (context, creds.serial)
    }

    /// NIOSSL's verification replaced by weft's: the chain must verify to the trust bundle,
    /// name an identity, and be issued by a CA bound to a node; `accept` says whether that
    /// node may speak for that identity (nil) or why not (the client expects its
    /// destination node's workloads, the server any node's own). The verified identity
    /// and node land in `peer`; `expires` is told when the chain stops being valid (a
    /// tunnel connection lives no longer than its peer's certificate).
    func verifier(peer: PeerIdentity, accept: @escaping @Sendable (_ identity: String, _ node: String) -> String?,
                  refused: @escaping @Sendable (String) -> Void,
                  expires: @escaping @Sendable (Date) -> Void) -> NIOSSLCustomVerificationCallback {
        let identities = identities
        return { certificates, promise in
            peer.markChecked()
            let der: [[UInt8]]
            do {
                der = try certificates.map { try $0.toDERBytes() }
            } catch {
                refused("unreadable peer certificate")
                promise.succeed(.failed)
                return
            }
            // Building and checking the chain is async (swift-certificates); the promise
            // may be completed from any thread.
            Task {
                do {
                    let v = try await identities.verify(chainDER: der)
                    let id = v.identity
                    guard let node = v.node else {
                        refused("\(id) is issued by a CA bound to no node, which may not speak for any workload (issue node CAs with weft ca issue-node)")
                        promise.succeed(.failed)
                        return
                    }
                    if let reason = accept(id, node) {
                        refused(reason)
                        promise.succeed(.failed)
                        return
                    }
                    peer.set(id, node: node, chain: der)
                    expires(v.notAfter)
                    promise.succeed(.certificateVerified)
                } catch {
                    refused("\(error)")
                    promise.succeed(.failed)
                }
            }
        }
    }
}
