import CLibbpf
import CWeftABI
import Foundation
import WeftBPF
import WeftConfig

/// One decision of the datapath, as its hook reported it in weft_events_v1.
public struct KernelEvent: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// connect() to a service frontend.
        case connect = 1
        /// An unconnected UDP datagram to a frontend.
        case sendmsg = 2
        /// A plaintext connection attempt to a workload, judged by inbound policy.
        case inbound = 3
    }

    /// When, on CLOCK_MONOTONIC (nanoseconds).
    public var monotonicNs: UInt64
    public var kind: Kind
    /// What was done: "translated", "captured", "no-backend", "refused", "dropped", "steered",
    /// "dns" (a query sent to the agent's DNS server).
    public var verdict: String
    /// Why, where the verdict has more than one cause.
    public var reason: String?
    public var proto: L4Protocol
    /// connect: the caller's cgroup; inbound at the workload's socket: the listener's; else 0.
    public var cgroupID: UInt64
    /// connect: the socket's bound address (nil if it was not bound yet); inbound: the
    /// packet's source.
    public var source: BackendAddress?
    /// connect: the frontend dialed; inbound: the workload address and port judged.
    public var destination: BackendAddress
    /// connect: where the socket was sent (a backend, the agent's listener).
    public var translated: BackendAddress?
    /// The frontend's weft_svc_val.svc_id (connect).
    public var serviceID: UInt32

    /// Decodes one ring buffer record; nil if it is not a weft_event of this build.
    public init?(_ raw: UnsafeRawBufferPointer) {
        guard raw.count >= MemoryLayout<weft_event>.size else { return nil }
        var e = weft_event()
        withUnsafeMutableBytes(of: &e) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<MemoryLayout<weft_event>.size])) }
        guard let kind = Kind(rawValue: e.kind), let proto = L4Protocol(rawValue: e.proto) else { return nil }
        func endpoint(_ family: UInt8, _ addr: [UInt8], _ port: UInt16) -> BackendAddress? {
            guard family == WEFT_FAMILY_V4 || family == WEFT_FAMILY_V6 else { return nil }
            return BackendAddress(address: IPAddress(family: family, bytes: addr), port: UInt16(bigEndian: port))
        }
        monotonicNs = e.ts_ns
        self.kind = kind
        self.proto = proto
        cgroupID = e.cgroup_id
        serviceID = e.svc_id
        guard let dst = endpoint(e.family, addrBytes(e.daddr), e.dport) else { return nil }
        destination = dst
        let src = addrBytes(e.saddr)
        source = src.allSatisfy({ $0 == 0 }) ? nil : endpoint(e.family, src, e.sport)
        translated = endpoint(e.xfamily, addrBytes(e.xaddr), e.xport)
        (verdict, reason) = Self.names(kind: kind, verdict: UInt32(e.verdict), reason: UInt32(e.reason))
    }

    static func names(kind: Kind, verdict: UInt32, reason: UInt32) -> (String, String?) {
        if kind == .inbound {
            let why: String
            switch reason {
            case WEFT_IN_STRICT_NETWORK.rawValue: why = "STRICT mTLS, at TC ingress"
            case WEFT_IN_STRICT_LOCAL.rawValue: why = "STRICT mTLS, at the workload's socket"
            case WEFT_IN_STEERED.rawValue: why = "policy or L7 telemetry on the port"
            case WEFT_IN_NO_LISTENER.rawValue: why = "to be steered, but the agent is not listening"
            case WEFT_IN_UNSTEERABLE.rawValue: why = "authorization applies, and it did not come through TC"
            case WEFT_IN_SQUATTED.rawValue: why = "an agent port, at a listener that is not the agent's"
            default: why = "reason \(reason)"
            }
            return (verdict == WEFT_VERDICT_STEERED.rawValue ? "steered" : "dropped", why)
        }
        switch verdict {
        case WEFT_VERDICT_TRANSLATED.rawValue: return ("translated", nil)
        case WEFT_VERDICT_CAPTURED.rawValue: return ("captured", nil)
        case WEFT_VERDICT_DNS.rawValue: return ("dns", nil)
        case WEFT_VERDICT_NO_BACKEND.rawValue: return ("no-backend", "the service has no active backend")
        case WEFT_VERDICT_REFUSED.rawValue:
            switch reason {
            case WEFT_REFUSED_CAPTURE_FULL.rawValue: return ("refused", "the captured connection's origin could not be recorded")
            case WEFT_REFUSED_EGRESS.rawValue: return ("refused", "egress: not in the mesh's registry (REGISTRY_ONLY)")
            default: return ("refused", "no backend of the socket's address family")
            }
        default: return ("verdict \(verdict)", nil)
        }
    }

    /// The verdicts the kernel reports.
    public static let verdicts = ["translated", "captured", "no-backend", "refused", "dropped", "steered", "dns"]
}

/// The reader of the datapath's flow events. One at a time per datapath (a lock on the
/// bpffs directory): ring buffer consumers share one read position. While it runs, the
/// programs are kept writing (weft_evctl_v1's deadline, pushed ahead every second); when
/// it stops, or dies, they stop within seconds.
public final class KernelEventTap {
    private let events: BPFMap
    private let control: BPFMap
    private let lostCounter: BPFMap
    private let lockFD: Int32
    /// Events lost to a full ring buffer before this reader started.
    private var lostSeen: UInt64

    /// How far ahead the deadline is pushed: a reader that dies stops the writing this long after.
    static let lease: UInt64 = 3_000_000_000

    /// Opens the pinned event maps of the datapath at `bpffs` and takes the reader's lock.
    public init(bpffs: String) throws {
        func open(_ name: String) throws -> BPFMap {
            let path = Datapath.mapPin(bpffs, name)
            if access(path, F_OK) != 0 {
                throw BPFError("no flow events at \(bpffs) (\(path) is missing): no weft datapath is pinned there, or it was pinned by an agent older than `weft monitor`; start `weft agent` or pass --bpffs")
            }
            return try BPFMap(pinnedAt: path)
        }
        events = try open("weft_events_v1")
        control = try open("weft_evctl_v1")
        lostCounter = try open("weft_evlost_v1")
        lockFD = Glibc.open(bpffs, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if lockFD < 0 { throw BPFError.errno("opening \(bpffs)") }
        if flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
            close(lockFD)
            throw BPFError("another reader has the kernel's flow events of \(bpffs) (a `weft monitor` without the agent, or the agent serving one); a ring buffer has one reader")
        }
        lostSeen = 0
        lostSeen = try lostTotal()
    }

    deinit {
        try? control.update(UInt32(0), weft_evctl_val(until_ns: 0))
        close(lockFD)
    }

    /// Events lost to a full ring buffer since the datapath was loaded, all CPUs.
    func lostTotal() throws -> UInt64 {
        try lostCounter.lookupPerCPU(UInt32(0), as: UInt64.self).reduce(0, &+)
    }

    static func monotonicNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// The wall-clock time of a CLOCK_MONOTONIC instant.
    public static func date(monotonicNs: UInt64) -> Date {
        let now = monotonicNow()
        return Date().addingTimeInterval(-Double(Int64(bitPattern: now &- monotonicNs)) / 1e9)
    }

    /// Reads until `stop()` says so (checked at least every 100 ms): each event to
    /// `event`, and every second the events lost since the last report (if any) to `lost`.
    public func run(stop: () -> Bool, event: (KernelEvent) -> Void, lost: (UInt64) -> Void) throws {
        var pending: [KernelEvent] = []
        let rb = try BPFRingBuffer(map: events) { raw in
            if let e = KernelEvent(raw) { pending.append(e) }
        }
        var renewed: UInt64 = 0
        while !stop() {
            let now = Self.monotonicNow()
            if now &- renewed >= 1_000_000_000 {
                try control.update(UInt32(0), weft_evctl_val(until_ns: now + Self.lease))
                renewed = now
                let total = try lostTotal()
                if total > lostSeen {
                    lost(total - lostSeen)
                    lostSeen = total
                }
            }
            // The kernel wakes a reader only when it had caught up; a record committed
            // while a busy reader was between looks waits for the next wakeup. A timed-out
            // wait collects such stragglers.
            if try rb.poll(timeoutMs: 100) == 0 { try rb.consume() }
            for e in pending { event(e) }
            pending.removeAll(keepingCapacity: true)
        }
    }
}
