import ArgumentParser
import Foundation
import WeftAgent
import WeftConfig
import WeftStore

/// Cluster mode: the etcd cluster a command reads or writes instead of one agent's socket.
struct EtcdOptions: ParsableArguments {
    @Option(help: "Cluster mode: comma-separated etcd URLs (http://HOST:PORT or https://…). The config goes to / comes from etcd instead of one agent.")
    var etcd: String?
    @Option(help: "PEM roots that sign the etcd members' certificates (https endpoints; default: the system's).")
    var etcdCa: String?
    @Option(help: "Client certificate for etcd members that require one (with --etcd-key).")
    var etcdCert: String?
    @Option(help: "Client certificate's key.")
    var etcdKey: String?

    /// The endpoints, or nil without --etcd; a bad setting is one line and exit 1.
    func endpoints() -> EtcdEndpoints? {
        guard let etcd else {
            if etcdCa != nil || etcdCert != nil || etcdKey != nil { fail("--etcd-ca/--etcd-cert/--etcd-key need --etcd") }
            return nil
        }
        let files = etcdCa == nil && etcdCert == nil && etcdKey == nil ? nil : EtcdEndpoints.TLSFiles(ca: etcdCa, cert: etcdCert, key: etcdKey)
        do { return try EtcdEndpoints(etcd, tls: files) } catch { fail("--etcd: \(error)") }
    }

    /// Runs `body` connected to etcd; etcd's and the cluster's errors are one line and exit 1.
    func with<R: Sendable>(_ endpoints: EtcdEndpoints, _ body: @Sendable (EtcdClient) async throws -> R) async -> R {
        do {
            return try await EtcdClient.with(endpoints) { try await body($0) }
        } catch let e as ClusterError {
            for d in e.diagnostics { printDiagnostic(d) }
            fail(e.description)
        } catch {
            fail("\(error)")
        }
    }
}

/// `--wait` and `--timeout` of the commands that write a cluster revision.
struct WaitOptions: ParsableArguments {
    @Flag(help: "Cluster mode: return once every live node serves the new revision, or name the nodes that do not and why (exit 1).")
    var wait = false
    @Option(help: "Seconds --wait waits.")
    var timeout: Double = 60

    /// Prints the outcome of writing a revision, waits if asked; exit 1 if not every node took it.
    func report(_ r: ClusterWriter.Result, verb: String, client: EtcdClient) async throws {
        for d in r.warnings { printDiagnostic(d) }
        print(r.changed ? "\(verb): cluster revision \(r.revision)" : "unchanged: cluster revision \(r.revision) already holds these resources")
        guard wait else { return }
        let outcome = try await ClusterReader(client: client).wait(for: r.revision, timeout: .milliseconds(Int64(timeout * 1000)))
        for n in outcome.rejected {
            print("\(n.node): rejected revision \(r.revision): \(n.error)")
            for d in n.diagnostics { print("  \(d)") }
        }
        for n in outcome.pending {
            print("\(n.node): still at revision \(n.applied) after \(String(format: "%.1f", outcome.seconds)) s")
        }
        if outcome.ok {
            print("\(outcome.converged.count) live node(s) serve revision \(r.revision) (\(String(format: "%.2f", outcome.seconds)) s)")
        } else {
            throw ClusterError("revision \(r.revision) is not in force everywhere: \(outcome.converged.count) node(s) serve it, \(outcome.rejected.count) rejected it, \(outcome.pending.count) did not answer in time")
        }
    }
}
