import Crypto
import Foundation
import Testing
import X509
@testable import WeftIdentity

@Suite struct SpiffeIDTests {
    @Test func parsesExactlyIstiosForm() {
        let id = SpiffeID(uri: "spiffe://cluster.local/ns/shop/sa/frontend")
        #expect(id?.trustDomain == "cluster.local" && id?.namespace == "shop" && id?.serviceAccount == "frontend")
        #expect(id?.uri == "spiffe://cluster.local/ns/shop/sa/frontend")
        for bad in ["spiffe://cluster.local/ns/shop/sa/frontend/", "spiffe://Cluster.local/ns/shop/sa/frontend",
                    "spiffe://cluster.local/ns/shop/sa/front%00end", "spiffe://cluster.local/ns/../sa/x",
                    "spiffe://cluster.local/ns/shop/sa/", "SPIFFE://cluster.local/ns/shop/sa/frontend",
                    "spiffe://cluster.local/ns/shop/sa/frontend\u{0}", "spiffe://cluster.local//ns/shop/sa/frontend",
                    "spiffe://cluster.local/sa/frontend/ns/shop", "https://cluster.local/ns/shop/sa/frontend"] {
            #expect(SpiffeID(uri: bad) == nil, "\(bad)")
        }
    }
}

@Suite struct CertificateAuthorityTests {
    func verify(_ leaf: Certificate, _ intermediates: [Certificate], roots: [Certificate], at now: Date,
                trustDomain: String = "cluster.local") async -> Bool {
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
            RFC5280Policy(validationTime: now)
            SpiffePolicy(trustDomain: trustDomain)
        }
        if case .validCertificate = await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates)) {
            return true
        }
        return false
    }

    @Test func rootNodeAndWorkloadChainVerifies() async throws {
        let now = Date()
        let root = try CertificateAuthority.createRoot(trustDomain: "cluster.local", now: now)
        let node = try root.issueNode("node-a", now: now)
        let id = try #require(SpiffeID(trustDomain: "cluster.local", namespace: "shop", serviceAccount: "frontend"))
        let key = P256.Signing.PrivateKey()
        let leaf = try node.issueWorkload(id, publicKey: key.publicKey, ttl: 24 * 3600, now: now)
        #expect(await verify(leaf, [node.certificate], roots: [root.certificate], at: now))
        // Empty subject, the identity as the only SAN, 24 h.
        #expect(leaf.subject == DistinguishedName())
        let sans = try #require(try leaf.extensions.subjectAlternativeNames)
        #expect(Array(sans) == [.uniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/frontend")])
        #expect(abs(leaf.notValidAfter.timeIntervalSince(now) - 24 * 3600) < 2)
        // Expired, or from another root: refused.
        #expect(!(await verify(leaf, [node.certificate], roots: [root.certificate], at: now.addingTimeInterval(25 * 3600))))
        let other = try CertificateAuthority.createRoot(trustDomain: "cluster.local", now: now)
        #expect(!(await verify(leaf, [node.certificate], roots: [other.certificate], at: now)))
        // Another trust domain: refused, whatever the chain.
        #expect(!(await verify(leaf, [node.certificate], roots: [root.certificate], at: now, trustDomain: "cluster.locall")))
        #expect(SpiffePolicy.identity(of: leaf) == id)
        // A node CA cannot mint another node CA.
        #expect(throws: IdentityError.self) { try node.issueNode("node-b") }
    }

    @Test func savedCALoadsBackAndItsKeyStaysPrivate() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weft-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let root = try CertificateAuthority.createRoot(trustDomain: "example.org")
        let node = try root.issueNode("node-a")
        try node.save(to: dir)
        let attrs = try FileManager.default.attributesOfItem(atPath: dir + "/ca.key")
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let back = try CertificateAuthority.load(from: dir)
        #expect(back.certificate == node.certificate && back.issuers == [root.certificate] && back.node == "node-a")
        chmod(dir + "/ca.key", 0o644)
        #expect(throws: IdentityError.self) { try CertificateAuthority.load(from: dir) }
        chmod(dir + "/ca.key", 0o600)
        // A key that is not the certificate's is refused.
        try root.save(to: dir + "-root")
        defer { try? FileManager.default.removeItem(atPath: dir + "-root") }
        try FileManager.default.removeItem(atPath: dir + "/ca.key")
        try FileManager.default.copyItem(atPath: dir + "-root/ca.key", toPath: dir + "/ca.key")
        #expect(throws: IdentityError.self) { try CertificateAuthority.load(from: dir) }
    }

    @Test func badTrustDomainIsOneClearError() {
        #expect(throws: IdentityError.self) { try CertificateAuthority.createRoot(trustDomain: "Not Valid") }
    }

    /// What the tunnel does with a handshake's chain: the credentials a node presents
    /// verify against a bundle holding its root (alone or with another), and not against
    /// a bundle without it; a renewal after a signer switch chains to the new root.
    @Test func credentialsVerifyAgainstTheTrustBundle() async throws {
        let root = try CertificateAuthority.createRoot(trustDomain: "cluster.local")
        let node = try root.issueNode("node-a")
        let certs = WorkloadCertificates(ca: node, ttl: 3600)
        let id = try #require(SpiffeID(trustDomain: "cluster.local", namespace: "shop", serviceAccount: "cart"))
        try certs.refresh(["shop/cart": id])
        let creds = try #require(certs.credentials(for: "shop/cart"))
        let other = try CertificateAuthority.createRoot(trustDomain: "cluster.local")
        let verified = try await TrustBundle(trustDomain: "cluster.local", roots: [other.certificate, root.certificate]).verify(chainDER: creds.chainDER)
        #expect(verified.id == id)
        // The leaf's issuer names its node: what peers check the identity against.
        #expect(verified.node == "node-a")
        // A root that signs workloads itself is bound to no node, unless it is an agent's
        // own (made for its node).
        let direct = WorkloadCertificates(ca: root, ttl: 3600)
        try direct.refresh(["shop/cart": id])
        let unbound = try await TrustBundle(trustDomain: "cluster.local", roots: [root.certificate])
            .verify(chainDER: try #require(direct.credentials(for: "shop/cart")).chainDER)
        #expect(unbound.node == nil)
        let own = try CertificateAuthority.createRoot(trustDomain: "cluster.local", node: "solo")
        let ownCerts = WorkloadCertificates(ca: own, ttl: 3600)
        try ownCerts.refresh(["shop/cart": id])
        #expect(try await TrustBundle(trustDomain: "cluster.local", roots: [own.certificate])
            .verify(chainDER: try #require(ownCerts.credentials(for: "shop/cart")).chainDER).node == "solo")
        #expect(own.isBoundToItsNode && node.isBoundToItsNode && !root.isBoundToItsNode)
        await #expect(throws: IdentityError.self) {
            try await TrustBundle(trustDomain: "cluster.local", roots: [other.certificate]).verify(chainDER: creds.chainDER)
        }
        await #expect(throws: IdentityError.self) {
            try await TrustBundle(trustDomain: "example.org", roots: [root.certificate]).verify(chainDER: creds.chainDER)
        }
        // Switching signer keeps the old certificate until the refresh re-mints it.
        let node2 = try other.issueNode("node-a")
        #expect(certs.replaceAuthority(node2))
        #expect(certs.credentials(for: "shop/cart")?.serial == creds.serial)
        try certs.refresh(["shop/cart": id])
        let renewed = try #require(certs.credentials(for: "shop/cart"))
        #expect(renewed.serial != creds.serial)
        #expect(try await TrustBundle(trustDomain: "cluster.local", roots: [other.certificate]).verify(chainDER: renewed.chainDER).id == id)
    }
}

@Suite struct NodeRootsTests {
    func pem(_ ca: CertificateAuthority) throws -> String { try ca.root.serializeAsPEM().pemString }

    @Test func takesOnlyARootBoundToTheNodeThatRegisteredIt() throws {
        let b = try CertificateAuthority.createRoot(trustDomain: "cluster.local", node: "node-b")
        let c = try CertificateAuthority.createRoot(trustDomain: "cluster.local", node: "node-c")
        let shared = try CertificateAuthority.createRoot(trustDomain: "cluster.local")
        var roots = NodeRoots()
        #expect(roots.register(node: "node-b", pems: [try pem(b)]).isEmpty)
        #expect(roots.roots == [b.root])
        // Node c claiming node b's root, or a root bound to no node (which could sign node
        // CAs for any node), is refused; so is what is not a certificate.
        let refused = roots.register(node: "node-c", pems: [try pem(b), try pem(shared), "junk"])
        #expect(refused.count == 3)
        #expect(refused[0].contains("bound to node node-b"), "\(refused)")
        #expect(refused[1].contains("bound to no node"), "\(refused)")
        #expect(roots.roots == [b.root])
        #expect(roots.register(node: "node-c", pems: [try pem(c)]).isEmpty)
        #expect(roots.roots == [b.root, c.root])
    }

    @Test func aNodeThatLeftStaysTrustedForTheGracePeriodOnly() throws {
        let b = try CertificateAuthority.createRoot(trustDomain: "cluster.local", node: "node-b")
        var roots = NodeRoots()
        _ = roots.register(node: "node-b", pems: [try pem(b)])
        let t0 = Date()
        roots.gone(node: "node-b", at: t0)
        roots.prune(grace: 3600, now: t0.addingTimeInterval(60))
        #expect(roots.roots == [b.root])
        // Back before the grace ran out: trusted again with no clock running.
        _ = roots.register(node: "node-b", pems: [try pem(b)])
        roots.prune(grace: 3600, now: t0.addingTimeInterval(7200))
        #expect(roots.roots == [b.root])
        roots.gone(node: "node-b", at: t0.addingTimeInterval(7200))
        roots.prune(grace: 3600, now: t0.addingTimeInterval(7200 + 3601))
        #expect(roots.roots.isEmpty)
    }
}
