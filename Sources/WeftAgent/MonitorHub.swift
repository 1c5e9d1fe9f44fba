import Foundation
import Glibc
import Logging
import Synchronization
import WeftDataplane
import WeftProxy

/// The agent's side of `weft monitor`: every attached monitor (an admin connection left
/// open) gets the flows its filter keeps, each through a bounded queue and its own writer
/// thread, so a slow or stopped monitor loses flows (counted, and told so) and never slows
/// a request. While any monitor is attached the agent reads the kernel's ring buffer; with
/// none attached the proxy pays one atomic load per event and the kernel writes nothing.
final class MonitorHub: @unchecked Sendable {
    /// Most monitors attached at once (each holds a thread).
    static let maxSubscribers = 16
    /// Flows held for one monitor before further ones are counted as lost.
    static let queueLimit = 8192

    private let lock = NSLock()
    private var subscribers: [ObjectIdentifier: Subscriber] = [:]
    /// Monitors attached, and those of them whose filter can pass a proxy flow: read per
    /// proxied event without taking the lock.
    private let attached = Atomic<Int>(0)
    private let proxyWatchers = Atomic<Int>(0)
    private var names = MonitorNames()
    private var tapRunning = false
    /// The last kernel reader ended without an error (a failing one is not restarted in
    /// a loop; the next monitor to attach tries again).
    private var tapHealthy = true
    /// The datapath's pin directory, once the agent has one (setDatapath).
    private var bpffs: String?
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// The agent attached (or adopted) its datapath, pinned under `bpffs`: monitors get
    /// the kernel's flow events from now on.
    func setDatapath(bpffs dir: String) { lock.withLock { bpffs = dir } }

    /// Whether anyone is watching (cheap: the proxy asks per event).
    var active: Bool { attached.load(ordering: .relaxed) > 0 }

    /// Names for the kernel's addresses and cgroups, from the config in force.
    func setNames(_ n: MonitorNames) { lock.withLock { names = n } }

    /// A proxied event, for whoever watches.
    func publish(_ event: ProxyEvent) {
        guard proxyWatchers.load(ordering: .relaxed) > 0 else { return }
        switch event {
        case .request(let r): publish(Flow(r))
        case .tcpClosed(let t): publish(Flow(t))
        case .tcpOpened, .audit: return
        }
    }

    private func publish(_ flow: Flow) {
        lock.withLock {
            for s in subscribers.values where s.filter.matches(flow) { s.offer(flow) }
        }
    }

    /// Serves one `weft monitor` on admin connection `fd` (owned from here on): the first
    /// line answers the request, then one JSON flow per line until the monitor goes away.
    func attach(fd: Int32, filter: FlowFilter) {
        var tv = timeval(tv_sec: 30, tv_usec: 0) // a monitor that reads nothing for 30 s is let go
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var header = AdminResponse(ok: true)
        if let bad = filter.unknownVerdict {
            header = .failure("no verdict \(bad); verdicts are \(Flow.verdicts.joined(separator: ", "))")
            AdminServer.sendLine(fd, header)
            close(fd)
            return
        }
        let sub = Subscriber(fd: fd, filter: filter)
        let (admitted, startTap, kernel) = lock.withLock { () -> (Bool, Bool, Bool) in
            let kernel = bpffs != nil
            guard subscribers.count < Self.maxSubscribers else { return (false, false, kernel) }
            subscribers[ObjectIdentifier(sub)] = sub
            countSubscribers()
            let start = !tapRunning && kernel
            if start {
                tapRunning = true
                tapHealthy = true
            }
            return (true, start, kernel)
        }
        guard admitted else {
            AdminServer.sendLine(fd, AdminResponse.failure("\(Self.maxSubscribers) monitors are attached already"))
            close(fd)
            return
        }
        var info = MonitorInfo(kernel: kernel)
        if !info.kernel { info.note = "this agent has no datapath: requests only" }
        header.monitor = info
        // The header goes out before the first flow (the writer thread starts after it).
        guard AdminServer.sendLine(fd, header) else {
            detach(sub)
            return
        }
        logger.info("weft monitor attached", metadata: ["component": "monitor", "filter": "\(filter)"])
        Thread { [self] in
            sub.run()
            detach(sub)
            logger.info("weft monitor detached: \(sub.sent) flows sent, \(sub.lostTotal) lost", metadata: ["component": "monitor"])
        }.start()
        if startTap { startKernelTap() }
    }

    /// Under `lock`.
    private func countSubscribers() {
        attached.store(subscribers.count, ordering: .relaxed)
        proxyWatchers.store(subscribers.values.filter { $0.filter.wantsProxyFlows }.count, ordering: .relaxed)
    }

    private func detach(_ sub: Subscriber) {
        lock.withLock {
            subscribers[ObjectIdentifier(sub)] = nil
            countSubscribers()
        }
        close(sub.fd)
    }

    /// Reads the kernel's flow events while anyone watches.
    private func startKernelTap() {
        Thread { [self] in
            defer {
                // A monitor that attached while this reader was stopping must not be left
                // without kernel events.
                let again = lock.withLock { () -> Bool in
                    tapRunning = !subscribers.isEmpty && tapHealthy
                    return tapRunning
                }
                if again { startKernelTap() }
            }
            guard let dir = lock.withLock({ bpffs }) else { return }
            do {
                let tap = try KernelEventTap(bpffs: dir)
                try tap.run(stop: { !active }, event: { e in
                    let n = lock.withLock { names }
                    publish(n.flow(e))
                }, lost: { n in publish(Flow.lost(n, at: "kernel")) })
                lock.withLock { tapHealthy = true }
            } catch {
                logger.warning("weft monitor: kernel flow events unavailable: \(error)", metadata: ["component": "monitor"])
                lock.withLock { tapHealthy = false }
                var f = Flow(time: Date(), type: .notice)
                f.reason = "kernel flow events unavailable: \(error)"
                publish(f)
            }
        }.start()
    }
}

/// What the agent tells a monitor when it attaches.
public struct MonitorInfo: Codable, Sendable {
    /// Whether kernel events come too (the agent has a datapath).
    public var kernel: Bool
    public var note: String?
}

/// One attached monitor: its filter, its queue, its connection.
private final class Subscriber: @unchecked Sendable {
    let fd: Int32
    let filter: FlowFilter
    private let cond = NSCondition()
    private var queue: [Flow] = []
    /// Flows that did not fit in the queue.
    private var dropped: UInt64 = 0
    /// Flows written, and losses reported (kernel and agent), over the monitor's life.
    private(set) var sent = 0
    private(set) var lostTotal: UInt64 = 0
    /// Events the kernel lost, not yet told: a count, never queued (a full queue must not
    /// swallow the report of a loss).
    private var kernelLost: UInt64 = 0

    init(fd: Int32, filter: FlowFilter) {
        self.fd = fd
        self.filter = filter
    }

    func offer(_ f: Flow) {
        cond.lock()
        if f.type == .lost { kernelLost += f.lost ?? 0 } else if queue.count < MonitorHub.queueLimit { queue.append(f) } else { dropped += 1 }
        cond.signal()
        cond.unlock()
    }


    /// POLLRDHUP (glibc shows it only to _GNU_SOURCE): the peer closed its end.
    private static let pollRDHUP: Int16 = 0x2000

    /// Whether the monitor hung up (checked while nothing is to be sent).
    private var gone: Bool {
        var p = pollfd(fd: fd, events: Self.pollRDHUP, revents: 0)
        return poll(&p, 1, 0) > 0 && p.revents & (Self.pollRDHUP | Int16(POLLHUP | POLLERR)) != 0
    }

    /// Sends queued flows until the monitor goes away.
    func run() {
        while true {
            cond.lock()
            if queue.isEmpty && dropped == 0 && kernelLost == 0 { _ = cond.wait(until: Date().addingTimeInterval(1)) }
            let batch = queue, lost = dropped, lostInKernel = kernelLost
            queue.removeAll(keepingCapacity: true)
            dropped = 0
            kernelLost = 0
            cond.unlock()
            if batch.isEmpty && lost == 0 && lostInKernel == 0 {
                if gone { return }
                continue
            }
            var out = Data()
            for f in batch {
                out.append(contentsOf: f.jsonLine)
                out.append(0x0a)
            }
            for (n, at) in [(lostInKernel, "kernel"), (lost, "agent")] where n > 0 {
                out.append(contentsOf: Flow.lost(n, at: at).jsonLine)
                out.append(0x0a)
            }
            if !AdminServer.sendAll(fd, out) { return }
            sent += batch.count
            lostTotal += lost + lostInKernel
        }
    }
}
