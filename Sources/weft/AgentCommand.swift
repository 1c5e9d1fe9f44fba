import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOCore
import OTel
import Prometheus
import ServiceLifecycle
import Tracing
import WeftAgent
import WeftBPF
import WeftProxy

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the node agent: load the datapath, apply the config dir, follow its changes."
    )

    @Option(help: "Directory of *.yaml/*.yml policy files (watched for changes).")
    var configDir = "/etc/weft"

    @Option(help: "cgroup v2 directory to attach to; its processes get the mesh. Default: the cgroup v2 root.")
    var cgroup: String?

    @Option(help: "bpffs directory for pinned maps and links.")
    var bpffs = "/sys/fs/bpf/weft"

    @Option(help: "Admin socket path (mode 0600, root only).")
    var adminSocket = "/run/weft/agent.sock"

    @Option(help: "This node's name, as in WorkloadEntry annotation weft.io/node. Default: the hostname.")
    var node: String?

    @Flag(help: "On exit, leave programs attached and maps pinned so L4 traffic keeps flowing; the next agent adopts them.")
    var keepDatapath = false

    @Option(help: "Seconds a removed backend stays draining (no new connections) before it is deleted.")
    var drainPeriod: Double = 30

    @Option(help: "Seconds between full re-syncs of the maps with the config.")
    var resyncInterval: Double = 5

    @Option(help: "Directory for committed revisions (the agent restarts on the last one).")
    var stateDir = "/var/lib/weft"

    @Option(help: "How many revisions to keep for `weft rollback`.")
    var keepRevisions = 20

    @Option(help: "Mesh root namespace: a PeerAuthentication there without selector is mesh-wide.")
    var rootNamespace = "weft-system"

    @Option(help: "Slots shared by all selection tables (4 bytes of kernel memory each); a Maglev table takes tableSize slots, a RANDOM/ROUND_ROBIN table one per weight unit.")
    var lbSlots: UInt32 = 4_194_304

    @Option(help: "Outbound capture listener port on 127.0.0.1 and ::1: connections to services that need L7 handling go there. 0 turns capture off (every service stays L4).")
    var proxyPort: UInt16 = 15001

    @Option(help: "SO_MARK the agent puts on its own upstream sockets so the kernel never captures them (decimal or 0x hex; must not collide with marks your routing uses).")
    var agentMark = "0x77650000"

    @Option(help: "Prometheus metrics (Istio's names and labels) on --metrics-address:PORT/metrics; 0 turns them off.")
    var metricsPort: UInt16 = 15090

    @Option(help: "Address the metrics are served on: loopback by default; a node address (or 0.0.0.0) lets a Prometheus on another host scrape them.")
    var metricsAddress = "127.0.0.1"

    @Option(help: "Seconds an HTTP/1 client may take to send a request's line and headers before it gets 408 and is closed.")
    var requestHeaderTimeout: Double = 10

    @Option(help: "Seconds a connection with nothing in flight stays open: the proxy's clients (HTTP/1 keep-alive, HTTP/2), the mTLS tunnel's connections both ways, and spliced TCP and WebSocket sessions (Envoy's idle_timeout).")
    var idleTimeout: Double = 3600

    @Option(help: "Trust domain of workload identities (spiffe://TRUST-DOMAIN/ns/…/sa/…).")
    var trustDomain = "cluster.local"

    @Option(help: "This node's CA from `weft ca issue-node` (several nodes). Default: the agent's own root, created in --state-dir/ca on first start.")
    var ca: String?

    @Option(help: "Lifetime of workload certificates in seconds (renewed at half life).")
    var certTtl: Double = 86400

    @Option(help: "mTLS tunnel port on every address of the node: other nodes' agents reach this node's workloads through it. 0 turns the tunnel off (meshed workloads are then reached in plaintext).")
    var tunnelPort: UInt16 = 15008

    @Option(help: "PEM file of roots to trust besides this node's CA's root (CA rotation: add the new root, switch --ca, drop the old root). Re-read at every resync, like --ca.")
    var trustBundle: String?

    @Option(help: "Plaintext inbound listener on every address: the TC program steers plaintext for a workload port under AuthorizationPolicy, or an HTTP port (telemetry), into it. 0: none (plaintext to a port under AuthorizationPolicy is then refused).")
    var inboundPort: UInt16 = 15006

    @Option(help: "Comma-separated network interfaces of the node that get the TC ingress program: STRICT ports drop plaintext there, before the stack, and plaintext is steered to --inbound-port. Without it STRICT still holds at the workloads' sockets, but nothing is steered.")
    var interfaces = ""

    @Option(help: "Write one JSON line per proxied request to this file (\"-\": standard output). Off by default.")
    var accessLog: String?

    @Option(help: "Seconds a TLS handshake on the mTLS tunnel may take before the connection is closed.")
    var tlsHandshakeTimeout: Double = 10

    @Option(help: "Seconds a request or response stream may go without a byte either way before it ends (408 if unanswered; Envoy's stream_idle_timeout). 0: no limit.")
    var streamIdleTimeout: Double = 300

    @Option(help: "Seconds a request (line, headers and body) may take to arrive before it gets 408 (Envoy's request_timeout). 0: no limit.")
    var requestTimeout: Double = 0

    @Option(help: "Most client connections the agent holds at once, all listeners together; over it a new connection is closed as it is accepted. 0: half the open-files limit (which the agent raises to its hard limit).")
    var maxConnections = 0

    @Option(help: "Most connections at once from one remote address to the tunnel and plaintext inbound listeners.")
    var maxConnectionsPerSource = 1024

    @Option(help: "Trace HTTP and gRPC requests: spans go to this OpenTelemetry collector with OTLP/gRPC (HOST:PORT, or http:// or https:// URL). Off by default.")
    var tracingEndpoint: String?

    @Option(help: "Percent of requests that start a trace when they arrive with no sampling decision (Istio's meshConfig defaultConfig.tracing.sampling); a request whose caller decided (W3C traceparent, B3) follows that decision.")
    var tracingSampling: Double = 1

    @Flag(help: "Require an agent to take over. An agent already answering on --admin-socket is always taken over without dropping a connection (this one serves on its listening sockets; it stops accepting, drains and exits, leaving the datapath to this one); with --takeover, starting fails if none answers. SIGHUP (systemctl reload weft) makes a running agent start its binary anew with --takeover: the upgrade in place.")
    var takeover = false

    @Option(help: "Seconds an agent that handed over to a new one lets its connections finish before it exits (HTTP/1 ones close after their current response, HTTP/2 clients and tunnel peers get GOAWAY, opaque TCP runs on).")
    var drainTimeout: Double = 30

    @Option(help: "The agent's DNS server on 127.0.0.1 and ::1: workloads' DNS queries (UDP and TCP port 53, to any resolver) are sent there by the kernel; it answers the mesh's hosts (ServiceEntry hosts and their short forms) and forwards the rest to the node's resolvers. 0 leaves workloads' DNS alone.")
    var dnsPort: UInt16 = 15053

    @Option(help: "Where the node's resolvers are (nameserver, search, options timeout/attempts), for what the DNS server forwards.")
    var resolvConf = "/etc/resolv.conf"

    @OptionGroup var etcd: EtcdOptions

    func run() async throws {
        let journal = Systemd.loggingToJournal
        LoggingSystem.bootstrap { label in
            if journal { return JournalLogHandler(label: label) }
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .info
            return h
        }
        let logger = Logger(label: "weft.agent")
        guard let cgroupPath = cgroup ?? KernelFeatures.cgroup2Mount() else {
            fail("no cgroup v2 hierarchy is mounted (weft needs cgroup v2); mount one or pass --cgroup")
        }
        let markText = agentMark.lowercased()
        guard let mark = markText.hasPrefix("0x") ? UInt32(markText.dropFirst(2), radix: 16) : UInt32(markText), mark != 0 else {
            fail("--agent-mark \(agentMark) is not a non-zero 32-bit number")
        }
        let options = AgentOptions(
            configDir: configDir, cgroup: cgroupPath, bpffs: bpffs, adminSocket: adminSocket,
            node: node ?? ProcessInfo.processInfo.hostName, keepDatapath: keepDatapath,
            drainPeriod: drainPeriod, resyncInterval: resyncInterval, lbSlots: lbSlots,
            stateDir: stateDir, keepRevisions: max(keepRevisions, 1), rootNamespace: rootNamespace,
            proxyPort: proxyPort, agentMark: mark, accessLog: accessLog, metricsPort: metricsPort)
        var opts = options
        opts.requestHeaderTimeout = requestHeaderTimeout
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be more than 0 seconds") }
        opts.idleTimeout = idleTimeout
        opts.trustDomain = trustDomain
        opts.caDir = ca
        opts.certTTL = max(certTtl, 2)
        opts.tunnelPort = tunnelPort
        opts.trustBundle = trustBundle
        opts.inboundPort = inboundPort
        guard tlsHandshakeTimeout > 0 else { throw ValidationError("--tls-handshake-timeout must be more than 0 seconds") }
        guard streamIdleTimeout >= 0, requestTimeout >= 0 else { throw ValidationError("--stream-idle-timeout and --request-timeout must be 0 or more seconds") }
        guard maxConnections >= 0, maxConnectionsPerSource > 0 else {
            throw ValidationError("--max-connections must be 0 (automatic) or more, --max-connections-per-source more than 0")
        }
        opts.handshakeTimeout = tlsHandshakeTimeout
        opts.streamIdleTimeout = streamIdleTimeout
        opts.requestTimeout = requestTimeout
        opts.maxConnections = maxConnections
        opts.maxConnectionsPerSource = maxConnectionsPerSource
        opts.etcd = etcd.endpoints()
        opts.interfaces = interfaces.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard (try? SocketAddress(ipAddress: metricsAddress, port: 0)) != nil else {
            throw ValidationError("--metrics-address \(metricsAddress) is not an IPv4 or IPv6 address")
        }
        opts.metricsAddress = metricsAddress
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout must be 0 or more seconds") }
        opts.takeover = takeover
        opts.drainTimeout = drainTimeout
        opts.dnsPort = dnsPort
        opts.resolvConf = resolvConf
        // One registry for the whole process: the agent's series, and whatever any library
        // reports through swift-metrics.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        guard (0...100).contains(tracingSampling) else { throw ValidationError("--tracing-sampling must be a percentage, 0 to 100") }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let endpoint = tracingEndpoint {
            let (tracer, exporter) = try tracingBackend(endpoint: endpoint, node: opts.node, logger: logger)
            opts.tracing = TracingSettings(tracer: tracer, samplingPercentage: tracingSampling, node: opts.node)
            services.append(.init(service: exporter))
        }
        let agent = Agent(options: opts, logger: logger, registry: registry)
        services.append(.init(service: agent))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            fail("agent: \(error)")
        }
    }
}

extension AgentCommand {
    /// swift-otel's tracer and its exporter (a Service: spans are batched — 2,048 at most
    /// held, the rest dropped and counted in its log, while the collector is away — and
    /// sent from its own task, never from a request's).
    func tracingBackend(endpoint: String, node: String, logger: Logger) throws -> (any Tracer, any Service) {
        let url = endpoint.contains("://") ? endpoint : "http://\(endpoint)"
        guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil, parsed.port != nil else {
            throw ValidationError("--tracing-endpoint \(endpoint) is not HOST:PORT or an http(s):// URL with a port")
        }
        var config = OTel.Configuration.default
        config.serviceName = "weft"
        config.resourceAttributes = ["host.name": node]
        config.diagnosticLogger = .custom(logger)
        config.diagnosticLogLevel = .warning
        config.metrics.enabled = false
        config.logs.enabled = false
        config.traces.exporter = .otlp
        config.traces.otlpExporter.protocol = .grpc
        config.traces.otlpExporter.endpoint = url
        // The proxy decides what is sampled (the caller's decision, or the percentage):
        // the tracer follows the parent it is handed and samples every root it is given.
        config.traces.sampler = .parentBasedAlwaysOn
        let backend = try OTel.makeTracingBackend(configuration: config)
        return (backend.factory, backend.service)
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status",
        abstract: "Ask a running agent what it serves (admin socket), or with --cluster every live node of an etcd cluster.")

    @OptionGroup var admin: AdminOptions
    @Option(help: "Trace HTTP and gRPC requests: spans go to this OpenTelemetry collector with OTLP/gRPC (HOST:PORT, or http:// or https:// URL). Off by default.")
    var tracingEndpoint: String?

    @Option(help: "Percent of requests that start a trace when they arrive with no sampling decision (Istio's meshConfig defaultConfig.tracing.sampling); a request whose caller decided (W3C traceparent, B3) follows that decision.")
    var tracingSampling: Double = 1

    @Option(help: "The agent's DNS server on 127.0.0.1 and ::1: workloads' DNS queries (UDP and TCP port 53, to any resolver) are sent there by the kernel; it answers the mesh's hosts (ServiceEntry hosts and their short forms) and forwards the rest to the node's resolvers. 0 leaves workloads' DNS alone.")
    var dnsPort: UInt16 = 15053

    @Option(help: "Where the node's resolvers are (nameserver, search, options timeout/attempts), for what the DNS server forwards.")
    var resolvConf = "/etc/resolv.conf"

    @OptionGroup var etcd: EtcdOptions
    @Flag(help: "Every live node of the cluster (--etcd): the revision it serves, how far behind it is, why.") var cluster = false
    @Flag(name: [.customShort("j"), .long], help: "JSON (with --cluster).") var json = false

    func run() async throws {
        guard cluster else {
            if etcd.etcd != nil { fail("--etcd goes with --cluster (one agent's status comes from its admin socket)") }
            let r = admin.send(AdminRequest(op: .status))
            return printJSON(r.status)
        }
        guard let endpoints = etcd.endpoints() else { fail("--cluster needs --etcd") }
        let (current, rows) = await etcd.with(endpoints) { try await ClusterReader(client: $0).nodes() }
        if json { return printJSON(rows) }
        print("cluster revision \(current); \(rows.count) live node(s)")
        let f = ISO8601DateFormatter()
        printTable(["NODE", "REVISION", "OBSERVED", "LAG", "APPLIED AT", "ERROR"], rows.map { r in
            [r.node, r.status.map { "\($0.appliedRevision)" } ?? "-", r.status.map { "\($0.observedRevision)" } ?? "-", "\(r.lag)",
             r.status?.appliedTime.map { f.string(from: $0) } ?? "-", r.status?.error ?? ""]
        })
    }
}
