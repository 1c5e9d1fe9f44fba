import ArgumentParser
import Foundation
import Glibc
import Synchronization
import WeftDataplane
import WeftAgent
import WeftProxy

/// `weft graph`: the service graph a running agent sees, from its Istio metrics.
struct GraphCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "The service graph this node's agent sees: who calls which service, which workload serves it, at what rate, with what errors and p99, over mTLS or not.",
        discussion: "The same graph is a live page on the agent's metrics port: http://127.0.0.1:15090/graph (--metrics-address, --metrics-port).")

    @OptionGroup var admin: AdminOptions
    @Option(help: "Seconds the rates, error shares and p99 are over (5 to 300; the agent samples its metrics every 5 s).")
    var window: Double = 60
    @Flag(name: [.customShort("j"), .long], help: "JSON.") var json = false

    func run() throws {
        var req = AdminRequest(op: .graph)
        req.window = window
        guard let g = admin.send(req).graph else { fail("the agent sent no graph") }
        if json { return printJSON(g) }
        if g.edges.isEmpty {
            print("no requests seen yet")
            return
        }
        func name(_ id: String) -> String {
            id.hasPrefix("unknown:") ? "(no workload)" : String(id.drop { $0 != ":" }.dropFirst())
        }
        print(g.window > 0 ? "rates over the last \(Int(g.window.rounded())) s" : "one sample so far: rates read 0 until the next (5 s)")
        printTable(["FROM", "TO", "PROTOCOL", "RATE/S", "ERRORS", "P99 MS", "MTLS", "TOTAL"], g.edges.map { e in
            [name(e.source), name(e.destination), e.protocolName, String(format: "%.2f", e.rate),
             e.errorRate.map { String(format: "%.1f%%", $0 * 100) } ?? "-", e.p99Millis.map { String(format: "%.1f", $0) } ?? "-",
             e.mutualTLS ? "yes" : "no", String(format: "%.0f", e.total)]
        })
    }
}

/// `weft monitor`: live flows, like Hubble's `observe`.
struct MonitorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "monitor",
        abstract: "Live flows on this node: each connect() to a service (translated, captured, no backend, refused), each plaintext connection attempt inbound policy dropped or steered, and each request and TCP connection the agent proxied.",
        discussion: """
            With the agent running, the flows come through its admin socket (the kernel's with workload and service \
            names, and the agent's requests). Without it, `weft monitor` reads the kernel's ring buffer itself \
            (addresses only; --kernel-only forces that). Flows the kernel or the agent could not hand over in time \
            are counted and shown as `lost`; the datapath never waits for a monitor.
            Filters: --from/--to take an address, ADDRESS:PORT, a workload (NAMESPACE/NAME or NAME) or a SPIFFE \
            identity; --service a ServiceEntry (NAMESPACE/NAME or NAME), a host, or a VIP[:PORT]; repeat a filter to \
            allow several values.
            """)

    @OptionGroup var admin: AdminOptions
    @Option(help: "bpffs directory the agent pinned its maps in (kernel events without an agent).")
    var bpffs: String = "/sys/fs/bpf/weft"
    @Option(help: "Only flows from this source.") var from: [String] = []
    @Option(help: "Only flows to this destination (frontend, backend, workload or host).") var to: [String] = []
    @Option(help: "Only flows with this verdict: \(Flow.verdicts.joined(separator: ", ")).") var verdict: [String] = []
    @Option(help: "Only flows of this service.") var service: [String] = []
    @Option(help: "Stop after this many flows (0: run until interrupted).") var count = 0
    @Option(help: "Stop after this many seconds (0: run until interrupted).") var duration: Double = 0
    @Flag(help: "Read the kernel's ring buffer directly, even if an agent runs (none may be serving a monitor).") var kernelOnly = false
    @Flag(name: [.customShort("j"), .long], help: "One JSON object per line.") var json = false

    func run() throws {
        let filter = FlowFilter(from: from, to: to, verdict: verdict, service: service)
        if let bad = filter.unknownVerdict { fail("no verdict \(bad); verdicts are \(Flow.verdicts.joined(separator: ", "))") }
        signal(SIGINT) { _ in monitorInterrupted.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in monitorInterrupted.store(true, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)
        var out = FlowPrinter(json: json, count: count, deadline: duration > 0 ? Date().addingTimeInterval(duration) : nil)
        if !kernelOnly {
            var request = AdminRequest(op: .monitor)
            request.filter = filter
            switch try AdminClient.connect(admin.adminSocket) {
            case .success(let fd):
                close(fd)
                return try fromAgent(request, &out)
            case .failure(let e) where e.code == ENOENT || e.code == ECONNREFUSED:
                FileHandle.standardError.write(Data("weft: no agent at \(admin.adminSocket) (\(e)): kernel events only, read from \(bpffs)\n".utf8))
            case .failure(let e):
                fail("cannot reach the agent at \(admin.adminSocket): \(e) (--admin-socket; --kernel-only reads the kernel's events without it)")
            }
        }
        try fromKernel(filter, &out)
    }

    /// The agent's stream: a header line, then flows.
    private func fromAgent(_ request: AdminRequest, _ out: inout FlowPrinter) throws {
        let fd: Int32
        do { fd = try AdminClient.open(request, socket: admin.adminSocket) } catch { fail("\(error)") }
        defer { close(fd) }
        var lines = LineReader(fd: fd)
        let dec = Flow.decoder()
        guard let first = lines.next(timeoutMs: 10_000), let header = try? dec.decode(AdminResponse.self, from: first) else {
            fail("the agent did not answer the monitor request")
        }
        guard header.ok else { fail(header.error ?? "the agent refused the monitor") }
        if let note = header.monitor?.note { FileHandle.standardError.write(Data("weft: \(note)\n".utf8)) }
        defer { out.flush() }
        while !out.done {
            // Output is written when no more input is at hand: one write for a burst.
            guard let line = lines.next(timeoutMs: out.pending ? 0 : 200) else {
                out.flush()
                if lines.closed { fail("the agent closed the monitor (it stopped, or this monitor read nothing for 30 s)") }
                continue
            }
            if json {
                // The agent filtered and encoded it already: passed on as it came.
                out.passOn(line)
                continue
            }
            do {
                out.show(try dec.decode(Flow.self, from: line))
            } catch {
                FileHandle.standardError.write(Data("weft: unreadable flow from the agent (\(error)): \(String(decoding: line.prefix(200), as: UTF8.self))\n".utf8))
            }
        }
    }

    /// The kernel's ring buffer, read here.
    private func fromKernel(_ filter: FlowFilter, _ out: inout FlowPrinter) throws {
        let tap: KernelEventTap
        do { tap = try KernelEventTap(bpffs: bpffs) } catch { fail("\(error)") }
        let maps = try? DatapathMaps(pinnedUnder: bpffs)
        let names = MonitorNames()
        var printer = out
        try tap.run(stop: { printer.flush(); return printer.done }, event: { e in
            let flow = names.flow(e) { maps?.workloadAddress(cgroup: $0) }
            if filter.matches(flow) { printer.show(flow) }
        }, lost: { n in printer.show(Flow.lost(n, at: "kernel")) })
        printer.flush()
        out = printer
    }
}

let monitorInterrupted = Atomic<Bool>(false)

/// Prints flows and knows when to stop.
struct FlowPrinter {
    let json: Bool
    let count: Int
    let deadline: Date?
    private var shown = 0

    init(json: Bool, count: Int, deadline: Date?) {
        self.json = json
        self.count = count
        self.deadline = deadline
    }

    var done: Bool {
        if monitorInterrupted.load(ordering: .relaxed) { return true }
        if count > 0 && shown >= count { return true }
        if let deadline, Date() >= deadline { return true }
        return false
    }

    /// Lines not yet written.
    private var buffer = Data()
    var pending: Bool { !buffer.isEmpty }

    mutating func show(_ f: Flow) {
        if f.type != .lost && f.type != .notice { shown += 1 }
        if json {
            buffer.append(contentsOf: f.jsonLine)
        } else {
            buffer.append(contentsOf: f.text.utf8)
        }
        buffer.append(0x0a)
    }

    /// A flow the agent sent as JSON, as it is (counted, not decoded).
    mutating func passOn(_ line: Data) {
        if !Self.has(line, Self.lostMarker) && !Self.has(line, Self.noticeMarker) { shown += 1 }
        buffer.append(line)
        buffer.append(0x0a)
    }

    static let lostMarker = Array("\"type\":\"lost\"}".utf8)
    static let noticeMarker = Array("\"type\":\"notice\"}".utf8)

    /// Whether the agent's line is of that type: its keys are sorted and neither kind has a
    /// verdict, so `type` is the last key. (A search of the whole line cost more than
    /// everything else the monitor does per line.)
    static func has(_ line: Data, _ marker: [UInt8]) -> Bool {
        line.count >= marker.count && line.suffix(marker.count).elementsEqual(marker)
    }

    /// Writes what is buffered: a monitor piped into another tool must not sit on its flows.
    mutating func flush() {
        guard !buffer.isEmpty else { return }
        FileHandle.standardOutput.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}

/// Lines from a socket, with a timeout per wait.
struct LineReader {
    let fd: Int32
    private var buffer: [UInt8] = []
    /// Where the next line starts in `buffer` (consumed bytes are dropped only when more
    /// is read: removing each line from the front would move the rest every time).
    private var start = 0
    private var chunk = [UInt8](repeating: 0, count: 1 << 16)
    private(set) var closed = false

    init(fd: Int32) { self.fd = fd }

    /// The next line (without its newline), or nil if none came within `timeoutMs` or the
    /// peer closed (then `closed`).
    mutating func next(timeoutMs: Int32) -> Data? {
        while true {
            if let nl = buffer[start...].firstIndex(of: 0x0a) {
                let line = Data(buffer[start..<nl])
                start = nl + 1
                return line
            }
            if closed { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMs) > 0 else { return nil }
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 {
                closed = true
                continue
            }
            buffer.removeSubrange(..<start)
            start = 0
            buffer.append(contentsOf: chunk[..<n])
        }
    }
}
