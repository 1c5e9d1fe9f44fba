import Foundation
import Logging
import NIOCore
import WeftConfig
import WeftDNS

/// This node's workloads' namespaces by cgroup id, read by the DNS server when a query's
/// answer depends on whose it is.
final class DNSNamespaces: @unchecked Sendable {
    private let lock = NSLock()
    private var byCgroup: [UInt64: String] = [:]

    func set(_ m: [UInt64: String]) {
        lock.withLock { byCgroup = m }
    }

    func namespace(of cgroup: UInt64) -> String? {
        lock.withLock { byCgroup[cgroup] }
    }
}

extension Agent {
    /// The DNS server, forwarding to the resolvers of --resolv-conf: the workloads' (it
    /// listens on --dns-port once the agent's config is in, listenDNS) and the agent's own
    /// for the names of DNS services (always, --dns-port 0 too).
    func makeDNS() -> DNSServer {
        let namespaces = dnsNamespaces
        return DNSServer(resolvConf: readResolvConf(), mark: options.agentMark, logger: logger) { namespaces.namespace(of: $0) }
    }

    /// Listens on 127.0.0.1 and ::1. If it cannot (the port is taken), workloads' DNS is
    /// left alone: the kernel sends queries to the agent only while its socket is there.
    func listenDNS(_ server: DNSServer) {
        do {
            try server.start(hosts: ["127.0.0.1"], port: Int(options.dnsPort))
        } catch {
            logger.error("DNS: cannot listen on 127.0.0.1:\(options.dnsPort) (\(error)); workloads' DNS goes to the resolvers they ask",
                         metadata: ["component": "dns"])
            return
        }
        var on = ["127.0.0.1"]
        // ::1 exists unless IPv6 is off on the node; IPv6 sockets' queries need it (without
        // it the kernel leaves them to the resolvers they ask).
        do {
            try server.start(hosts: ["::1"], port: Int(options.dnsPort))
            on.append("::1")
        } catch {
            logger.warning("DNS: not on [::1]:\(options.dnsPort) (\(error)); IPv6 sockets' queries go to the resolvers they ask",
                           metadata: ["component": "dns"])
        }
        let conf = readResolvConf()
        logger.info("DNS on \(on.joined(separator: ", ")) port \(options.dnsPort): mesh hosts answered here, the rest forwarded to \(conf.nameservers.map(\.description).joined(separator: ", ")) (\(options.resolvConf))",
                    metadata: ["component": "dns"])
    }

    /// The node's resolvers; a missing or unreadable file is the resolver library's
    /// default (127.0.0.1), said once.
    func readResolvConf() -> ResolvConf {
        guard let text = try? String(contentsOfFile: options.resolvConf, encoding: .utf8) else {
            logger.warning("DNS: cannot read \(options.resolvConf); forwarding to 127.0.0.1:53", metadata: ["component": "dns"])
            return ResolvConf(parsing: "")
        }
        return ResolvConf(parsing: text)
    }

    /// A DNS service's answers changed: the snapshot in force gets them (same revision),
    /// and the kernel and the proxy its new backends.
    func resolvedNamesChanged() {
        committing.lock()
        defer { committing.unlock() }
        guard let resolver = lock.withLock({ self.resolver }) else { return }
        let current = lock.withLock { snapshot }
        let table = resolver.current
        guard current.revision > 0, table != current.resolved else { return }
        let next = current.resolving(table)
        let desired = desiredState(next)
        let tooBig = desired.capacityProblems()
        guard tooBig.isEmpty else {
            logger.error("DNS services' new addresses do not fit the datapath: \(tooBig.joined(separator: "; ")); keeping the ones in force",
                         metadata: ["component": "dns"])
            return
        }
        if apply(next, desired, reason: "DNS services' addresses", cause: "resolved") {
            lock.withLock {
                snapshot = next
                self.desired = desired
            }
        }
    }

    /// The DNS server's names, and this node's workloads by cgroup id (`workloads`), from
    /// `snap`; resolv.conf is read again too (a changed search list or resolver is taken
    /// with the config).
    func updateDNS(_ snap: Snapshot, workloads: [UInt64: WorkloadEntry]) {
        guard let server = lock.withLock({ dns }) else { return }
        dnsNamespaces.set(workloads.mapValues(\.metadata.namespace))
        let conf = readResolvConf()
        // A service without addresses (resolution NONE names none) is not answered here:
        // its clients must learn the address the name really has.
        let hosts = snap.serviceEntries.filter { !$0.addresses.isEmpty }.flatMap { se in se.hosts.map { DNSTable.Host(name: $0, addresses: se.addresses) } }
        server.update(resolvConf: conf)
        server.update(table: DNSTable(hosts: hosts, searchDomains: conf.search))
        // REGISTRY_ONLY: answers for NONE services' hosts open what they name.
        let names = snap.outboundTrafficPolicy == .registryOnly
            ? EgressNames(hosts: snap.serviceEntries.filter { $0.resolution == .none }.flatMap { se in se.hosts.map { ($0, se.ports.map(\.number)) } })
            : EgressNames()
        server.update(egressNames: names) { [self] learned in
            let rules = learnedEgress.learn(learned)
            guard !rules.isEmpty, let maps = lock.withLock({ datapath?.maps }) else { return }
            do {
                try maps.openEgress(rules.map { ($0, learnedEgress.expiry(of: $0) ?? Date()) })
            } catch {
                logger.error("REGISTRY_ONLY: cannot open \(learned.name)'s addresses in the kernel (\(error)); connections to them are refused until the next resync",
                             metadata: ["component": "dns"])
            }
        }
    }
}

/// The addresses given to ServiceEntries that name none (AutoAddresses), kept in a file of
/// the state directory so that a restarted agent gives each the address it had.
final class AutoAddressStore: @unchecked Sendable {
    private let path: String
    private let logger: Logger
    private let lock = NSLock()
    private var table: AutoAddresses

    init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
        if let data = FileManager.default.contents(atPath: path) {
            do {
                table = try JSONDecoder().decode(AutoAddresses.self, from: data)
            } catch {
                logger.warning("\(path) is not readable (\(error)); ServiceEntries without addresses get theirs anew", metadata: ["component": "dns"])
                table = AutoAddresses()
            }
        } else {
            table = AutoAddresses()
        }
    }

    var current: AutoAddresses { lock.withLock { table } }

    /// The table of a snapshot going into force; written out if it changed (write and
    /// rename: a crash leaves the old file or the new one).
    func keep(_ t: AutoAddresses) {
        let changed = lock.withLock { () -> Bool in
            guard t != table else { return false }
            table = t
            return true
        }
        guard changed else { return }
        do {
            let data = try JSONEncoder().encode(t)
            let tmp = path + ".tmp"
            try data.write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, path) == 0 else { throw AgentError("rename to \(path): \(String(cString: strerror(errno)))") }
        } catch {
            logger.error("keeping the ServiceEntries' allocated addresses in \(path) failed: \(error)", metadata: ["component": "dns"])
        }
    }
}
