import Foundation
import WeftConfig
import WeftDataplane
import WeftProxy

/// One side of a flow.
public struct FlowEndpoint: Codable, Sendable, Equatable {
    public var ip: String?
    public var port: UInt16?
    /// NAMESPACE/NAME of the WorkloadEntry.
    public var workload: String?
    /// The SPIFFE identity (requests).
    public var principal: String?

    public init(ip: String? = nil, port: UInt16? = nil, workload: String? = nil, principal: String? = nil) {
        self.ip = ip
        self.port = port
        self.workload = workload
        self.principal = principal
    }

    init(_ a: BackendAddress?, workload: String?) {
        self.init(ip: a?.address.description, port: a.map { $0.port == 0 ? nil : $0.port } ?? nil, workload: workload)
    }

    /// `addr:port`, the address, or nil.
    var socket: String? {
        guard let ip else { return nil }
        guard let port else { return ip }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// What a person reads: the workload, else the address.
    var label: String? { workload ?? socket }

    /// Whether `text` names this endpoint: its address (with or without the port), its
    /// workload as NAMESPACE/NAME or NAME, or its SPIFFE identity.
    func matches(_ text: String) -> Bool {
        if let ip, text == ip { return true }
        if let s = socket, text == s { return true }
        if let w = workload, text == w || w.hasSuffix("/" + text) { return true }
        if let p = principal, text == p { return true }
        return false
    }
}

/// One event `weft monitor` shows: a kernel decision (connect, udp, inbound), a request or
/// TCP connection the agent proxied, or a count of events lost.
public struct Flow: Codable, Sendable {
    public enum Kind: String, Codable, Sendable {
        case connect, udp, inbound, request, tcp, lost
        /// Something the monitor should know (reason), e.g. kernel events unavailable.
        case notice
    }

    public var time: Date
    public var type: Kind
    /// connect/udp/inbound: the kernel's verdict (KernelEvent.verdicts); request/tcp:
    /// "forwarded", "denied" (authorization), "error" (answered by the agent itself).
    public var verdict: String?
    public var reason: String?
    public var source: FlowEndpoint?
    /// The frontend dialed (connect/udp), the workload judged (inbound), the service host
    /// (request/tcp).
    public var destination: FlowEndpoint?
    /// NAMESPACE/NAME of the ServiceEntry, where known.
    public var service: String?
    /// Where it went: the backend or agent listener (connect/udp), the upstream endpoint
    /// (request/tcp).
    public var backend: String?
    /// "tcp"/"udp" (kernel), "HTTP/1.1", "HTTP/2", "gRPC" (requests).
    public var `protocol`: String?
    /// The cgroup id the kernel saw (connect, inbound at the socket).
    public var cgroup: UInt64?
    public var method: String?
    public var path: String?
    public var authority: String?
    public var status: Int?
    public var flags: [String]?
    public var durationMs: Double?
    /// "source" or "destination": which end of the tunnel's agent reported a request.
    public var reporter: String?
    public var bytesSent: Int?
    public var bytesReceived: Int?
    /// type lost: how many events, and where ("kernel": the ring buffer was full;
    /// "agent": this monitor read too slowly).
    public var lost: UInt64?
    public var lostAt: String?

    public init(time: Date, type: Kind) {
        self.time = time
        self.type = type
    }

    /// Events lost at `at`.
    public static func lost(_ n: UInt64, at: String) -> Flow {
        var f = Flow(time: Date(), type: .lost)
        f.lost = n
        f.lostAt = at
        return f
    }

    /// A decoder of the flows the agent sends.
    public static func decoder() -> JSONDecoder {
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .custom { d in
            let text = try d.singleValueContainer().decode(String.self)
            guard let date = Flow.parseTime(text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: d.codingPath, debugDescription: "bad time \(text)"))
            }
            return date
        }
        return dec
    }

    /// A time as the agent sends it (ISO 8601, UTC, milliseconds).
    public static func parseTime(_ text: String) -> Date? {
        try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text)
    }

    /// Every verdict a flow can have.
    public static let verdicts = KernelEvent.verdicts + proxyVerdicts
    /// The verdicts of requests and TCP connections the proxy carried.
    static let proxyVerdicts = ["forwarded", "denied", "error"]
}

/// Names for what the kernel reports by address and cgroup: workloads and services of
/// the config in force. Empty without an agent: flows then show addresses.
public struct MonitorNames: Sendable {
    var workloadByCgroup: [UInt64: String] = [:]
    var workloadByAddress: [IPAddress: String] = [:]
    var serviceByFrontend: [BackendAddress: String] = [:]

    public init() {}

    init(snapshot: Snapshot, cgroups: [UInt64: WorkloadEntry]) {
        for (id, we) in cgroups { workloadByCgroup[id] = "\(we.metadata.namespace)/\(we.metadata.name)" }
        for we in snapshot.workloadEntries { workloadByAddress[we.spec.address] = "\(we.metadata.namespace)/\(we.metadata.name)" }
        for se in snapshot.serviceEntries {
            for a in se.addresses {
                for p in se.ports { serviceByFrontend[BackendAddress(address: a, port: p.number)] = "\(se.metadata.namespace)/\(se.metadata.name)" }
            }
        }
    }

    /// The flow of a kernel event. `sourceAddress` names a caller whose socket was not
    /// bound yet (the workload's address by cgroup, from weft_wl_v1, without an agent).
    public func flow(_ e: KernelEvent, sourceAddress: (UInt64) -> IPAddress? = { _ in nil }) -> Flow {
        var f = Flow(time: KernelEventTap.date(monotonicNs: e.monotonicNs), type: e.kind == .connect ? .connect : e.kind == .sendmsg ? .udp : .inbound)
        f.verdict = e.verdict
        f.reason = e.reason
        f.protocol = e.proto.name
        f.cgroup = e.cgroupID == 0 ? nil : e.cgroupID
        switch e.kind {
        case .connect, .sendmsg:
            let workload = workloadByCgroup[e.cgroupID]
            f.source = FlowEndpoint(e.source ?? sourceAddress(e.cgroupID).map { BackendAddress(address: $0, port: 0) }, workload: workload)
            f.destination = FlowEndpoint(e.destination, workload: nil)
            f.service = serviceByFrontend[e.destination]
            f.backend = e.translated?.description
        case .inbound:
            f.source = FlowEndpoint(e.source, workload: e.source.flatMap { workloadByAddress[$0.address] })
            f.destination = FlowEndpoint(e.destination, workload: workloadByCgroup[e.cgroupID] ?? workloadByAddress[e.destination.address])
        }
        return f
    }
}

extension Flow {
    /// The flow of a request the proxy finished.
    init(_ r: RequestRecord) {
        self.init(time: r.start, type: .request)
        verdict = r.upstream != nil ? "forwarded" : r.status == 403 && r.flags.isEmpty ? "denied" : "error"
        source = Flow.source(r.peers)
        destination = FlowEndpoint(ip: r.peers.destinationHost, workload: r.peers.destinationWorkload.map { "\($0.metadata.namespace)/\($0.metadata.name)" },
                                   principal: r.peers.destinationPrincipal)
        service = "\(r.peers.destinationService.namespace)/\(r.peers.destinationService.name)"
        backend = r.upstream
        self.protocol = r.protocolName
        method = r.method
        path = r.path
        authority = r.authority
        status = r.status
        flags = r.flags.isEmpty ? nil : r.flags
        durationMs = (r.durationMillis * 1000).rounded() / 1000
        reporter = r.peers.reporter
        bytesSent = r.responseBytes
        bytesReceived = r.requestBytes
    }

    /// The flow of an opaque TCP connection the proxy carried, when it closed.
    init(_ t: TCPRecord) {
        self.init(time: Date(), type: .tcp)
        verdict = t.flags.isEmpty ? "forwarded" : "error"
        source = Flow.source(t.peers)
        destination = FlowEndpoint(ip: t.peers.destinationHost, workload: t.peers.destinationWorkload.map { "\($0.metadata.namespace)/\($0.metadata.name)" },
                                   principal: t.peers.destinationPrincipal)
        service = "\(t.peers.destinationService.namespace)/\(t.peers.destinationService.name)"
        backend = t.upstream
        self.protocol = "tcp"
        flags = t.flags.isEmpty ? nil : t.flags
        reporter = t.peers.reporter
        bytesSent = t.sentBytes
        bytesReceived = t.receivedBytes
    }

    private static func source(_ p: Peers) -> FlowEndpoint {
        // The client as the proxy saw it: "a.b.c.d:port" or "[v6]:port". (Per request, on
        // the event loop: plain Substring work, no Foundation.)
        var ip: Substring = Substring(p.client), port: UInt16?
        if let colon = ip.lastIndex(of: ":"), let n = UInt16(ip[ip.index(after: colon)...]) {
            ip = ip[..<colon]
            if ip.first == "[" && ip.last == "]" { ip = ip.dropFirst().dropLast() }
            port = n
        }
        return FlowEndpoint(ip: String(ip), port: port, workload: p.source.map { "\($0.metadata.namespace)/\($0.metadata.name)" }, principal: p.sourcePrincipal)
    }
}

/// What `weft monitor --from/--to/--verdict/--service` keep. Each list is "any of";
/// the lists together are "all of". Counts of lost events always pass.
public struct FlowFilter: Codable, Sendable {
    public var from: [String] = []
    public var to: [String] = []
    public var verdict: [String] = []
    public var service: [String] = []

    public init(from: [String] = [], to: [String] = [], verdict: [String] = [], service: [String] = []) {
        self.from = from
        self.to = to
        self.verdict = verdict
        self.service = service
    }

    /// Whether any request or TCP flow of the proxy can pass (else the agent does not
    /// even build them for this monitor).
    var wantsProxyFlows: Bool { verdict.isEmpty || verdict.contains { Flow.proxyVerdicts.contains($0) } }

    /// A verdict no flow can have, if any (the operator mistyped it).
    public var unknownVerdict: String? { verdict.first { !Flow.verdicts.contains($0) } }

    public func matches(_ f: Flow) -> Bool {
        if f.type == .lost || f.type == .notice { return true }
        if !from.isEmpty && !from.contains(where: { f.source?.matches($0) == true }) { return false }
        if !to.isEmpty && !to.contains(where: { t in
            f.destination?.matches(t) == true || f.backend == t || f.backend.map { $0.hasPrefix(t + ":") } == true
        }) { return false }
        if !verdict.isEmpty && !verdict.contains(where: { $0 == f.verdict }) { return false }
        if !service.isEmpty && !service.contains(where: { s in
            if let svc = f.service, svc == s || svc.hasSuffix("/" + s) { return true }
            // The host a request named, or the frontend a kernel event dialed.
            if let d = f.destination, f.type == .request || f.type == .tcp ? d.ip == s : d.matches(s) { return true }
            return false
        }) { return false }
        return true
    }
}

extension Flow {
    /// One line for people.
    public var text: String {
        let time = Flow.timeFormat.string(from: self.time)
        let kind = type.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)
        func v() -> String { (verdict ?? "").uppercased() }
        switch type {
        case .notice:
            return "\(time) \(kind) \(reason ?? "")"
        case .lost:
            return "\(time) \(kind) \(lost ?? 0) event(s) lost \(lostAt == "kernel" ? "in the kernel (ring buffer full)" : "by the agent (this monitor read too slowly)")"
        case .connect, .udp:
            var line = "\(time) \(kind) \(source?.label ?? cgroup.map { "cgroup \($0)" } ?? "?") -> \(destination?.socket ?? "?")"
            if let service { line += " (\(service))" }
            if let backend { line += " => \(backend)" }
            line += " \(v())"
            if let reason { line += " (\(reason))" }
            return line
        case .inbound:
            var line = "\(time) \(kind) \(source?.label ?? "?") -> \(destination?.socket ?? "?")"
            if let w = destination?.workload { line += " (\(w))" }
            line += " \(v())"
            if let reason { line += " (\(reason))" }
            return line
        case .request, .tcp:
            var line = "\(time) \(kind) \(source?.label ?? "?") -> \(destination?.ip ?? "?")"
            if type == .request { line += " \(method ?? "-") \(path ?? "-") \(status.map(String.init) ?? "-")" }
            if let backend { line += " => \(backend)" }
            line += " \(v())"
            if let flags { line += " flags=\(flags.joined(separator: ","))" }
            if let durationMs { line += String(format: " %.1fms", durationMs) }
            if type == .tcp { line += " sent=\(bytesSent ?? 0) received=\(bytesReceived ?? 0)" }
            if let p = source?.principal { line += " principal=\(p)" }
            if let reporter { line += " [\(reporter)]" }
            return line
        }
    }

    static let timeFormat: DateFormatter = {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss.SSS"
        f.timeZone = TimeZone(identifier: "UTC")
        f.locale = Locale(identifier: "en_US_POSIX")
        return f
    }()
}

extension Flow {
    /// The flow as one line of JSON, keys sorted — what JSONEncoder with `.sortedKeys` and
    /// `.withoutEscapingSlashes` writes, without its cost: the agent writes a line per
    /// proxied request to every monitor that takes them (Foundation's encoder and date
    /// formatter took ~15 µs a flow).
    public var jsonLine: [UInt8] {
        var o = JSONObject()
        o.string("authority", authority)
        o.string("backend", backend)
        o.int("bytesReceived", bytesReceived)
        o.int("bytesSent", bytesSent)
        o.int("cgroup", cgroup)
        o.endpoint("destination", destination)
        o.double("durationMs", durationMs)
        if let flags {
            o.key("flags")
            o.out.append(UInt8(ascii: "["))
            for (i, f) in flags.enumerated() {
                if i > 0 { o.out.append(UInt8(ascii: ",")) }
                JSONObject.quote(f, into: &o.out)
            }
            o.out.append(UInt8(ascii: "]"))
        }
        o.int("lost", lost)
        o.string("lostAt", lostAt)
        o.string("method", method)
        o.string("path", path)
        o.string("protocol", self.protocol)
        o.string("reason", reason)
        o.string("reporter", reporter)
        o.string("service", service)
        o.endpoint("source", source)
        o.int("status", status)
        o.string("time", Flow.isoTime(time))
        o.string("type", type.rawValue)
        o.string("verdict", verdict)
        o.out.append(UInt8(ascii: "}"))
        return o.out
    }

    /// `2026-12-06T19:47:01.212Z`, as the encoders here write dates.
    public static func isoTime(_ d: Date) -> String {
        let t = d.timeIntervalSince1970
        var secs = time_t(t.rounded(.down))
        var ms = Int(((t - Double(secs)) * 1000).rounded(.down))
        if ms >= 1000 { secs += 1; ms -= 1000 }
        var tm = tm()
        gmtime_r(&secs, &tm)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }
}

/// A JSON object written key by key (keys in the order given; nil values left out).
private struct JSONObject {
    var out: [UInt8] = [UInt8(ascii: "{")]
    private var first = true

    mutating func key(_ k: String) {
        if !first { out.append(UInt8(ascii: ",")) }
        first = false
        Self.quote(k, into: &out)
        out.append(UInt8(ascii: ":"))
    }

    mutating func string(_ k: String, _ v: String?) {
        guard let v else { return }
        key(k)
        Self.quote(v, into: &out)
    }

    mutating func int<T: BinaryInteger>(_ k: String, _ v: T?) {
        guard let v else { return }
        key(k)
        out.append(contentsOf: String(v).utf8)
    }

    mutating func double(_ k: String, _ v: Double?) {
        guard let v, v.isFinite else { return }
        key(k)
        // Integral values as integers, as JSONEncoder writes them.
        out.append(contentsOf: (v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : "\(v)").utf8)
    }

    mutating func endpoint(_ k: String, _ e: FlowEndpoint?) {
        guard let e else { return }
        key(k)
        var o = JSONObject()
        o.string("ip", e.ip)
        o.int("port", e.port)
        o.string("principal", e.principal)
        o.string("workload", e.workload)
        out.append(contentsOf: o.out)
        out.append(UInt8(ascii: "}"))
    }

    /// A JSON string: quotes, backslashes and control characters escaped.
    static func quote(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0a: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0d: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xf)]])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
