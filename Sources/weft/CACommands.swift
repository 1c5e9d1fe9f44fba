import ArgumentParser
import Foundation
import WeftAgent
import WeftIdentity

/// `weft ca …`: the mesh's certificate authorities for several nodes.
struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Create the mesh's root CA and per-node intermediates.",
        subcommands: [Init.self, IssueNode.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a root CA (ca.pem, ca.key mode 0600) in --out.")

        @Option(help: "Directory to write the root into (created, mode 0700; must not hold a CA already).")
        var out: String

        @Option(help: "Trust domain of the identities this root vouches for.")
        var trustDomain = "cluster.local"

        @Option(help: "Bind the root to one node (a node's own CA, as the agent makes by default; in cluster mode its registration makes peers trust it). Without it: a mesh root for `issue-node`.")
        var node: String?

        func run() throws {
            if FileManager.default.fileExists(atPath: out + "/ca.key") {
                fail("\(out) already holds a CA (ca.key); refusing to overwrite it")
            }
            do {
                let root = try CertificateAuthority.createRoot(trustDomain: trustDomain, node: node)
                try root.save(to: out)
                print("root CA for trust domain \(trustDomain)\(node.map { ", bound to node \($0)," } ?? "") written to \(out) (valid until \(root.certificate.notValidAfter))")
            } catch {
                fail("\(error)")
            }
        }
    }

    struct IssueNode: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "issue-node", abstract: "Issue a node's intermediate CA from a root made by `weft ca init`.")

        @Option(help: "Directory of the root CA.")
        var ca: String

        @Option(help: "The node's name (as in WorkloadEntry weft.io/node); its agent mints only for workloads bound to it.")
        var node: String

        @Option(help: "Directory to write the node CA into.")
        var out: String

        func run() throws {
            if FileManager.default.fileExists(atPath: out + "/ca.key") {
                fail("\(out) already holds a CA (ca.key); refusing to overwrite it")
            }
            do {
                let root = try CertificateAuthority.load(from: ca)
                let nodeCA = try root.issueNode(node)
                try nodeCA.save(to: out)
                print("node CA for \(node) written to \(out) (valid until \(nodeCA.certificate.notValidAfter))")
            } catch {
                fail("\(error)")
            }
        }
    }
}

/// `weft cert show [WORKLOAD]`: the agent's workload certificates (admin socket).
struct CertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cert", abstract: "Workload certificates of the running agent.",
                                                    subcommands: [Show.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Identity, serial, validity and chain of each workload certificate.")

        @OptionGroup var admin: AdminOptions

        @Argument(help: "A workload, NAMESPACE/NAME of its WorkloadEntry (default: all).")
        var workload: String?

        @Flag(name: [.customShort("j"), .long], help: "Print JSON (with the PEM chain).")
        var json = false

        @Flag(help: "Print the PEM chain after each certificate.")
        var pem = false

        func run() throws {
            let r = admin.send(AdminRequest(op: .certificates))
            var certs = r.certificates ?? []
            if let w = workload {
                certs = certs.filter { $0.workload == w }
                if certs.isEmpty { fail("no certificate for workload \(w) on this node (is its WorkloadEntry bound here with weft.io/node?)") }
            }
            if json { return printJSON(certs) }
            let f = ISO8601DateFormatter()
            printTable(["WORKLOAD", "IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER"],
                       certs.map { [$0.workload, $0.identity, $0.serial, f.string(from: $0.notBefore), f.string(from: $0.notAfter)] })
            if pem { for c in certs { print(c.chainPEM, terminator: "") } }
        }
    }
}

/// `weft authz check`: what the running agent's AuthorizationPolicies decide for a request.
struct AuthzCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "authz", abstract: "Authorization policy tools.",
                                                    subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Explain whether a request would be allowed, and which policy and rule decided.",
            discussion: "Without --method and --path the request is a plain TCP connection.")

        @OptionGroup var admin: AdminOptions
        @Option(help: "Caller identity, spiffe://TRUST-DOMAIN/ns/NS/sa/SA (omit for a plaintext caller).") var from: String?
        @Option(help: "Destination workload, NAMESPACE/NAME of its WorkloadEntry.") var to: String
        @Option(help: "Destination (workload) port.") var port: UInt16
        @Option(help: "HTTP method.") var method: String?
        @Option(help: "HTTP path (normalized as the agent does before matching).") var path: String?
        @Option(help: "HTTP host (authority).") var host: String?
        @Option(help: "Caller address (for ipBlocks and source.ip).") var sourceIp: String?
        @Flag(name: [.customShort("j"), .long], help: "JSON.") var json = false

        func run() throws {
            var q = AuthzQuery(from: from, to: to, port: port)
            q.method = method
            q.path = path
            q.host = host
            q.sourceIP = sourceIp
            var req = AdminRequest(op: .authz)
            req.authz = q
            guard let a = admin.send(req).authz else { fail("the agent gave no decision") }
            if json { return printJSON(a) }
            print(a.allowed ? "ALLOW" : "DENY")
            print("  because: \(a.reason)")
            if let p = a.normalizedPath, p != path { print("  path as matched: \(p)") }
            if !a.audited.isEmpty { print("  audited by: \(a.audited.joined(separator: ", "))") }
            print("  policies on \(to): \(a.policies.isEmpty ? "none" : a.policies.joined(separator: ", "))")
            if !a.allowed { throw ExitCode(1) }
        }
    }
}
