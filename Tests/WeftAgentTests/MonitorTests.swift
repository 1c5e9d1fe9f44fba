import CWeftABI
import Foundation
import Testing
@testable import WeftAgent
import WeftConfig
import WeftDataplane

/// What `weft monitor` makes of the kernel's records, and what its filters keep.
@Suite struct MonitorTests {
    /// A weft_event as sock.bpf.c writes it for a connect() translated to a backend.
    func record(verdict: weft_event_verdict, kind: weft_event_kind = WEFT_EV_CONNECT, reason: UInt8 = 0) -> [UInt8] {
        var e = weft_event()
        e.ts_ns = 42
        e.cgroup_id = 7
        e.kind = UInt8(kind.rawValue)
        e.verdict = UInt8(verdict.rawValue)
        e.reason = reason
        e.proto = 6
        e.family = UInt8(WEFT_FAMILY_V4)
        e.svc_id = 3
        withUnsafeMutableBytes(of: &e.daddr) { $0.copyBytes(from: [10, 96, 0, 10] + [UInt8](repeating: 0, count: 12)) }
        e.dport = UInt16(80).bigEndian
        if verdict == WEFT_VERDICT_TRANSLATED {
            withUnsafeMutableBytes(of: &e.xaddr) { $0.copyBytes(from: [10, 1, 0, 7] + [UInt8](repeating: 0, count: 12)) }
            e.xport = UInt16(8080).bigEndian
            e.xfamily = UInt8(WEFT_FAMILY_V4)
        }
        return withUnsafeBytes(of: e) { Array($0) }
    }

    func decode(_ bytes: [UInt8]) -> KernelEvent? { bytes.withUnsafeBytes { KernelEvent($0) } }

    @Test func decodesAConnect() throws {
        let e = try #require(decode(record(verdict: WEFT_VERDICT_TRANSLATED)))
        #expect(e.kind == .connect && e.verdict == "translated" && e.reason == nil)
        #expect(e.destination.description == "10.96.0.10:80" && e.translated?.description == "10.1.0.7:8080")
        #expect(e.source == nil, "an unbound socket has no source address")
        #expect(e.cgroupID == 7 && e.serviceID == 3 && e.proto == .tcp)
    }

    @Test func decodesRefusalsAndInboundReasons() throws {
        let nb = try #require(decode(record(verdict: WEFT_VERDICT_NO_BACKEND)))
        #expect(nb.verdict == "no-backend" && nb.translated == nil)
        let full = try #require(decode(record(verdict: WEFT_VERDICT_REFUSED, reason: UInt8(WEFT_REFUSED_CAPTURE_FULL.rawValue))))
        #expect(full.verdict == "refused" && full.reason == "the captured connection's origin could not be recorded")
        let drop = try #require(decode(record(verdict: WEFT_VERDICT_DROPPED, kind: WEFT_EV_INBOUND, reason: UInt8(WEFT_IN_STRICT_NETWORK.rawValue))))
        #expect(drop.kind == .inbound && drop.verdict == "dropped" && drop.reason == "STRICT mTLS, at TC ingress")
    }

    @Test func rejectsWhatIsNotAnEvent() {
        #expect(decode([1, 2, 3]) == nil, "short record")
        var bad = record(verdict: WEFT_VERDICT_TRANSLATED)
        bad[MemoryLayout<weft_event>.offset(of: \weft_event.kind)!] = 99
        #expect(decode(bad) == nil, "unknown kind")
    }

    func flow(_ names: MonitorNames = MonitorNames()) throws -> Flow {
        names.flow(try #require(decode(record(verdict: WEFT_VERDICT_TRANSLATED)))) { _ in IPAddress("10.250.1.10") }
    }

    @Test func withoutNamesTheSourceIsTheWorkloadAddress() throws {
        let f = try flow()
        #expect(f.type == .connect && f.source == FlowEndpoint(ip: "10.250.1.10") && f.service == nil && f.backend == "10.1.0.7:8080")
        #expect(f.text.hasSuffix(" connect 10.250.1.10 -> 10.96.0.10:80 => 10.1.0.7:8080 TRANSLATED"), "\(f.text)")
    }

    @Test func filtersKeepWhatWasAskedFor() throws {
        var names = MonitorNames()
        names.workloadByCgroup[7] = "default/frontend"
        names.serviceByFrontend[BackendAddress(address: IPAddress("10.96.0.10")!, port: 80)] = "default/web"
        let f = try flow(names)
        #expect(f.source?.workload == "default/frontend" && f.service == "default/web")
        for (filter, kept) in [
            (FlowFilter(from: ["frontend"]), true), (FlowFilter(from: ["default/frontend"]), true), (FlowFilter(from: ["10.250.1.10"]), true),
            (FlowFilter(from: ["backend"]), false), (FlowFilter(to: ["10.96.0.10:80"]), true), (FlowFilter(to: ["10.1.0.7"]), true),
            (FlowFilter(to: ["10.1.0.8"]), false), (FlowFilter(verdict: ["translated", "dropped"]), true), (FlowFilter(verdict: ["dropped"]), false),
            (FlowFilter(service: ["web"]), true), (FlowFilter(service: ["default/web"]), true), (FlowFilter(service: ["10.96.0.10:80"]), true),
            (FlowFilter(service: ["db"]), false), (FlowFilter(from: ["frontend"], service: ["db"]), false),
        ] {
            #expect(filter.matches(f) == kept, "\(filter)")
        }
        #expect(FlowFilter(verdict: ["dropped"]).matches(Flow.lost(3, at: "kernel")), "losses are always shown")
        #expect(FlowFilter(verdict: ["dropt"]).unknownVerdict == "dropt")
    }

    /// The agent's hand-written JSON says what Foundation's encoder would: same keys, same
    /// values, whatever the strings hold.
    @Test func jsonLinesReadAsFoundationWritesThem() throws {
        var request = Flow(time: Date(timeIntervalSince1970: 1_796_000_000.2125), type: .request)
        request.verdict = "forwarded"
        request.method = "GET"
        request.path = "/a\"b\\c/\u{1}\n\t é 🎉"
        request.status = 200
        request.flags = ["UF", "URX"]
        request.durationMs = 6.234
        request.source = FlowEndpoint(ip: "fd00::1", port: 40000, workload: "default/frontend", principal: "spiffe://cluster.local/ns/default/sa/frontend")
        request.destination = FlowEndpoint(ip: "web.default.svc.cluster.local")
        request.bytesSent = 12
        request.bytesReceived = 0
        var connect = try flow()
        connect.cgroup = UInt64.max
        var whole = Flow.lost(7, at: "agent")
        whole.durationMs = 3
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        enc.dateEncodingStrategy = .custom { date, e in
            var c = e.singleValueContainer()
            try c.encode(Flow.isoTime(date))
        }
        for f in [request, connect, whole] {
            let mine = try JSONSerialization.jsonObject(with: Data(f.jsonLine)) as? NSDictionary
            let theirs = try JSONSerialization.jsonObject(with: enc.encode(f)) as? NSDictionary
            #expect(mine != nil && mine == theirs, "\(String(decoding: f.jsonLine, as: UTF8.self))")
            let back = try Flow.decoder().decode(Flow.self, from: Data(f.jsonLine))
            #expect(back.path == f.path && back.cgroup == f.cgroup && back.durationMs == f.durationMs)
        }
        #expect(Flow.isoTime(Date(timeIntervalSince1970: 1_796_000_000.2125)) == "2026-11-30T00:53:20.212Z")
        #expect(Flow.parseTime(Flow.isoTime(request.time)).map { abs($0.timeIntervalSince(request.time)) < 0.001 } == true)
    }
}
