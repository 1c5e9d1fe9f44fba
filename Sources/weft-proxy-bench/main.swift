// weft-proxy-bench: what one proxied HTTP/1.1 request costs the agent's proxy, in heap
// allocations and CPU time, measured in one process with no kernel hooks (scripts/bench
// prints it next to the peers' table). The proxy is weft's own (ProxyRuntime and its OutboundListener with the
// bench's VirtualService route, one event loop, Istio's metrics recorded); the client and the upstream are plain
// blocking sockets on their own threads that allocate nothing per request, so every
// allocation counted while the requests run is the proxy's (and NIO's under it). The
// "direct" row — the same client and upstream with no proxy between — proves that: it
// must read 0.
//
// The same for HTTP/2 on both sides ("weft_h2"): a client and an upstream that speak
// prior-knowledge HTTP/2 with fixed, pre-encoded header blocks (HPACK without indexing, so
// no table to keep), one request at a time on one connection — the proxy's frame-level
// sessions, its HPACK and header validation (NIO's) and the exchange between them.
//
//   weft-proxy-bench [REQUESTS]      (default 20000; prints one JSON object)
//   weft-proxy-bench REQUESTS nio|weft|channel_only   one parser alone, for a profiler
//   weft-proxy-bench REQUESTS h1|h2  one proxied protocol alone, for a profiler
import CAllocCounter
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Tracing
import WeftConfig
import WeftProxy

#if canImport(Glibc)
import Glibc
#endif

let requests = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 20000 : 20000
let warmup = max(200, requests / 10)

/// A blocking TCP socket on 127.0.0.1, or the process ends with what went wrong.
func loopbackSocket() -> CInt {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0, "socket: \(errno)")
    var one: CInt = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<CInt>.size))
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
    return fd
}

func loopback(port: UInt16) -> sockaddr_in {
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    return a
}

/// A listener on 127.0.0.1 at a port the kernel picks; returns it and its port.
func listenLoopback() -> (CInt, UInt16) {
    let fd = loopbackSocket()
    var a = loopback(port: 0)
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            precondition(bind(fd, $0, len) == 0 && listen(fd, 64) == 0, "bind/listen: \(errno)")
            _ = getsockname(fd, $0, &len)
        }
    }
    return (fd, UInt16(bigEndian: a.sin_port))
}

func connectLoopback(port: UInt16) -> CInt {
    let fd = loopbackSocket()
    var a = loopback(port: port)
    let r = withUnsafePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    precondition(r == 0, "connect to 127.0.0.1:\(port): \(errno)")
    return fd
}

/// A free port for the proxy's listeners (it binds 127.0.0.1 and ::1 on one port).
func freePort() -> UInt16 {
    let (fd, port) = listenLoopback()
    close(fd)
    return port
}

/// Where "\r\n\r\n" ends in buf[0..<n], if it does.
func headEnd(_ buf: UnsafeMutablePointer<UInt8>, _ n: Int) -> Int? {
    var i = 3
    while i < n {
        if buf[i] == 10 && buf[i - 1] == 13 && buf[i - 2] == 10 && buf[i - 3] == 13 { return i + 1 }
        i += 1
    }
    return nil
}

let contentLengthName = Array("\r\ncontent-length:".utf8)

/// The Content-Length of the head in buf[0..<end] (ASCII, case-insensitive name).
func contentLength(_ buf: UnsafeMutablePointer<UInt8>, _ end: Int) -> Int {
    let name = contentLengthName
    var i = 0
    outer: while i + name.count < end {
        for j in 0..<name.count {
            var c = buf[i + j]
            if c >= 65 && c <= 90 { c += 32 }
            if c != name[j] { i += 1; continue outer }
        }
        var k = i + name.count, v = 0
        while k < end && buf[k] == 32 { k += 1 }
        while k < end && buf[k] >= 48 && buf[k] <= 57 { v = v * 10 + Int(buf[k] - 48); k += 1 }
        return v
    }
    return 0
}

/// The upstream: answers every request on every connection with a fixed 200, using one
/// buffer per connection allocated before its first request.
func serveUpstream(_ listener: CInt) {
    let response = Array("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok".utf8)
    while true {
        let fd = accept(listener, nil, nil)
        guard fd >= 0 else { return }
        let t = Thread {
            let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
            var have = 0
            while true {
                let n = read(fd, buf + have, 65536 - have)
                if n <= 0 { break }
                have += n
                // The client sends one request at a time, without a body.
                guard let end = headEnd(buf, have) else { continue }
                memmove(buf, buf + end, have - end)
                have -= end
                _ = response.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            }
            close(fd)
        }
        t.start()
    }
}

/// Sends `count` keep-alive requests one after another on `fd`; true if each got a 200.
func runClient(_ fd: CInt, count: Int, buf: UnsafeMutablePointer<UInt8>, request: [UInt8]) -> Bool {
    for _ in 0..<count {
        let w = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard w == request.count else { return false }
        var have = 0
        var need = Int.max
        while have < need {
            let n = read(fd, buf + have, 65536 - have)
            if n <= 0 { return false }
            have += n
            if need == Int.max, let end = headEnd(buf, have) {
                guard have >= 12, buf[9] == 50, buf[10] == 48, buf[11] == 48 else { return false } // "200"
                need = end + contentLength(buf, end)
            }
        }
    }
    return true
}

// MARK: HTTP/2 peers (RFC 9113), blocking, allocating nothing per request

let h2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

/// A frame header: length, type, flags, stream.
func frameHeader(_ length: Int, _ type: UInt8, _ flags: UInt8, _ stream: UInt32) -> [UInt8] {
    [UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags,
     UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)]
}

/// An HPACK string literal, not Huffman-coded (all are under 127 bytes).
func hpackString(_ s: String) -> [UInt8] { [UInt8(s.utf8.count)] + Array(s.utf8) }

/// The client's request block: GET /bench with the bench's fields, static-table names,
/// literal values never indexed (RFC 7541 §6.2.2), so every request is the same bytes.
let h2RequestBlock: [UInt8] = [0x82, 0x86] // :method GET, :scheme http
    + [0x04] + hpackString("/bench") // :path
    + [0x01] + hpackString("bench2") // :authority
    + [0x0f, 0x2b] + hpackString("weft-proxy-bench") // user-agent (static 58)
    + [0x0f, 0x04] + hpackString("*/*") // accept (static 19)

/// The upstream's response block: :status 200, content-type, content-length 2.
let h2ResponseBlock: [UInt8] = [0x88] + [0x0f, 0x10] + hpackString("text/plain") + [0x0f, 0x0d] + hpackString("2")

/// Reads frames from `fd` into `buf` (kept between calls in `have`), calling `frame` with
/// each whole one (type, flags, stream, payload offset, length) until it returns true.
func readFrames(_ fd: CInt, _ buf: UnsafeMutablePointer<UInt8>, _ have: inout Int,
                _ frame: (UInt8, UInt8, UInt32, Int, Int) -> Bool) -> Bool {
    while true {
        var at = 0
        while have - at >= 9 {
            let len = Int(buf[at]) << 16 | Int(buf[at + 1]) << 8 | Int(buf[at + 2])
            guard have - at >= 9 + len else { break }
            let stream = UInt32(buf[at + 5] & 0x7f) << 24 | UInt32(buf[at + 6]) << 16 | UInt32(buf[at + 7]) << 8 | UInt32(buf[at + 8])
            let done = frame(buf[at + 3], buf[at + 4], stream, at + 9, len)
            at += 9 + len
            if done {
                memmove(buf, buf + at, have - at)
                have -= at
                return true
            }
        }
        memmove(buf, buf + at, have - at)
        have -= at
        let n = read(fd, buf + have, 65536 - have)
        if n <= 0 { return false }
        have += n
    }
}

func writeAll(_ fd: CInt, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
}

/// One side's connection setup: (the client's preface and) SETTINGS, then the peer's.
let h2Settings = frameHeader(0, 4, 0, 0), h2SettingsAck = frameHeader(0, 4, 1, 0)

/// The HTTP/2 upstream: answers each request (a HEADERS frame with END_STREAM) with the
/// fixed block and a 2-byte body; acknowledges SETTINGS, ignores the rest.
func serveUpstreamH2(_ listener: CInt) {
    while true {
        let fd = accept(listener, nil, nil)
        guard fd >= 0 else { return }
        Thread {
            let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
            var out: [UInt8] = []
            var have = 0
            // The client preface first.
            while have < 24 {
                let n = read(fd, buf + have, 65536 - have)
                if n <= 0 { close(fd); return }
                have += n
            }
            memmove(buf, buf + 24, have - 24)
            have -= 24
            _ = writeAll(fd, h2Settings)
            // HEADERS + DATA(END_STREAM) in one write, made once; each answer patches in
            // its stream id.
            out = frameHeader(h2ResponseBlock.count, 1, 0x4, 0) + h2ResponseBlock + frameHeader(2, 0, 0x1, 0) + Array("ok".utf8)
            let second = 9 + h2ResponseBlock.count
            while readFrames(fd, buf, &have, { type, flags, stream, _, _ in
                if type == 4 && flags & 1 == 0 { _ = writeAll(fd, h2SettingsAck) }
                if type == 1 && flags & 1 != 0 {
                    for at in [5, second + 5] {
                        out[at] = UInt8(stream >> 24 & 0x7f); out[at + 1] = UInt8(stream >> 16 & 0xff)
                        out[at + 2] = UInt8(stream >> 8 & 0xff); out[at + 3] = UInt8(stream & 0xff)
                    }
                    _ = out.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                }
                return false
            }) {}
            close(fd)
        }.start()
    }
}

/// An HTTP/2 client connection to `port`, its preface and SETTINGS sent.
func connectH2(port: UInt16) -> CInt {
    let fd = connectLoopback(port: port)
    precondition(writeAll(fd, h2Preface + h2Settings), "HTTP/2 preface to \(port)")
    return fd
}

/// Sends `count` requests one after another on `fd` (streams from `stream`, by 2); true if
/// each was answered 200 with its body. Gives the connection window back as DATA comes.
func runClientH2(_ fd: CInt, count: Int, stream: inout UInt32, buf: UnsafeMutablePointer<UInt8>, have: inout Int) -> Bool {
    var request = frameHeader(h2RequestBlock.count, 1, 0x5, 0) + h2RequestBlock
    var received = 0
    for _ in 0..<count {
        request[5] = UInt8(stream >> 24 & 0x7f); request[6] = UInt8(stream >> 16 & 0xff)
        request[7] = UInt8(stream >> 8 & 0xff); request[8] = UInt8(stream & 0xff)
        guard writeAll(fd, request) else { return false }
        var ok = false
        let s = stream
        let got = readFrames(fd, buf, &have) { type, flags, id, at, len in
            if type == 4 && flags & 1 == 0 { _ = writeAll(fd, h2SettingsAck) }
            guard id == s else { return false }
            if type == 1 { ok = len > 0 && buf[at] == 0x88 } // :status 200, static index 8
            if type == 0 { received += len }
            if type == 3 { ok = false; return true } // RST_STREAM
            return flags & 1 != 0 // END_STREAM
        }
        guard got && ok else { return false }
        if received >= 32768 {
            var wu = frameHeader(4, 8, 0, 0)
            wu += [UInt8(received >> 24 & 0x7f), UInt8(received >> 16 & 0xff), UInt8(received >> 8 & 0xff), UInt8(received & 0xff)]
            guard writeAll(fd, wu) else { return false }
            received = 0
        }
        stream += 2
    }
    return true
}

/// CPU seconds of the whole process so far (user + system).
func cpuSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

struct Run {
    var allocations: Double
    var cpuMicros: Double
    var requestsPerSecond: Double
}

/// Warms up, then measures `requests` HTTP/2 requests to `port` on one connection.
func measureH2(port: UInt16) -> Run {
    let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
    var have = 0, stream: UInt32 = 1
    let fd = connectH2(port: port)
    precondition(runClientH2(fd, count: warmup, stream: &stream, buf: buf, have: &have), "warm-up HTTP/2 requests to port \(port) failed")
    let a0 = weft_alloc_count(), c0 = cpuSeconds(), t0 = DispatchTime.now().uptimeNanoseconds
    precondition(runClientH2(fd, count: requests, stream: &stream, buf: buf, have: &have), "HTTP/2 requests to port \(port) failed")
    let a1 = weft_alloc_count(), c1 = cpuSeconds(), t1 = DispatchTime.now().uptimeNanoseconds
    close(fd)
    return Run(allocations: Double(a1 - a0) / Double(requests), cpuMicros: (c1 - c0) * 1e6 / Double(requests),
               requestsPerSecond: Double(requests) / (Double(t1 - t0) / 1e9))
}

/// Warms up, then measures `requests` requests to `port` on one connection.
func measure(port: UInt16) -> Run {
    let request = Array("GET /bench HTTP/1.1\r\nhost: bench1\r\nuser-agent: weft-proxy-bench\r\naccept: */*\r\n\r\n".utf8)
    let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
    let fd = connectLoopback(port: port)
    precondition(runClient(fd, count: warmup, buf: buf, request: request), "warm-up requests to port \(port) failed")
    let a0 = weft_alloc_count(), c0 = cpuSeconds(), t0 = DispatchTime.now().uptimeNanoseconds
    precondition(runClient(fd, count: requests, buf: buf, request: request), "requests to port \(port) failed")
    let a1 = weft_alloc_count(), c1 = cpuSeconds(), t1 = DispatchTime.now().uptimeNanoseconds
    close(fd)
    return Run(allocations: Double(a1 - a0) / Double(requests), cpuMicros: (c1 - c0) * 1e6 / Double(requests),
               requestsPerSecond: Double(requests) / (Double(t1 - t0) / 1e9))
}

// The request head alone, read by each parser behind the same embedded channel.
let head = Array("GET /bench HTTP/1.1\r\nhost: bench1\r\nuser-agent: weft-proxy-bench\r\naccept: */*\r\n\r\n".utf8)
/// Heads read per parser: a fixed count, not REQUESTS, so that two runs with different
/// REQUESTS differ only in proxied requests (the README's instructions-per-request method).
let heads = CommandLine.arguments.count > 2 ? requests : 20000
func measureParsers(_ parsers: [ProxyBenchmarks.Parser]) -> [String] {
    var parsing: [String] = []
    for parser in parsers {
        _ = ProxyBenchmarks.parse(head, count: 2000, with: parser)
        let a0 = weft_alloc_count(), c0 = cpuSeconds()
        let seen = ProxyBenchmarks.parse(head, count: heads, with: parser)
        let a1 = weft_alloc_count(), c1 = cpuSeconds()
        precondition(seen == (parser == .channelOnly ? heads : 3 * heads), "the \(parser) parser did not read every head")
        parsing.append(String(format: "\"%@\": {\"allocations_per_request\": %.1f, \"cpu_ns_per_request\": %.0f}",
                              parser.rawValue, Double(a1 - a0) / Double(heads), (c1 - c0) * 1e9 / Double(heads)))
    }
    return parsing
}
// `weft-proxy-bench REQUESTS PARSER`: that parser only (for a profiler), then exit.
if CommandLine.arguments.count > 2, let only = ProxyBenchmarks.Parser(rawValue: CommandLine.arguments[2]) {
    print(measureParsers([only])[0])
    exit(0)
}
// With a protocol named (a profiler's run), no parser rows: they would not be the same
// work in runs of different REQUESTS.
let parsing = CommandLine.arguments.count > 2 ? [] : measureParsers(ProxyBenchmarks.Parser.allCases)

let (upstreamFD, upstreamPort) = listenLoopback()
Thread { serveUpstream(upstreamFD) }.start()
let (upstreamH2FD, upstreamH2Port) = listenLoopback()
Thread { serveUpstreamH2(upstreamH2FD) }.start()

// The route of scripts/bench l7: prefix /, one request header set.
let yaml = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench1}
spec:
  hosts: [bench1.default.svc.cluster.local]
  addresses: ["10.96.0.1"]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: \(upstreamPort)}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench1}
spec:
  hosts: [bench1]
  http:
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: bench1}}]
    headers: {request: {set: {x-route: bench}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench2}
spec:
  hosts: [bench2.default.svc.cluster.local]
  addresses: ["10.96.0.2"]
  ports: [{number: 80, name: http2, protocol: HTTP2, targetPort: \(upstreamH2Port)}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench2}
spec:
  hosts: [bench2]
  http:
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: bench2}}]
    headers: {request: {set: {x-route: bench}}}
"""
let snapshot: Snapshot
do {
    snapshot = try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "bench.yaml"), revision: 1)
} catch {
    fatalError("the bench config does not validate: \(error)")
}
let vip = SocketKey(IPAddress("10.96.0.1")!, 80), vipH2 = SocketKey(IPAddress("10.96.0.2")!, 80)
let proxyPort = freePort()
/// Which VIP a connection was "captured" to: the HTTP/2 client connects from a port the
/// bench remembers (the kernel's record, in the agent).
let h2ClientPorts = NIOLockedValueBox<Set<UInt16>>([])
var settings = ProxyRuntime.Settings(port: proxyPort, agentMark: 0, threads: 1)
// WEFT_BENCH_TRACING=PERCENT: tracing on, that share of requests sampled, spans to a
// tracer that drops them (the proxy's own part of tracing: decisions, ids, fields).
if let p = ProcessInfo.processInfo.environment["WEFT_BENCH_TRACING"].flatMap(Double.init) {
    settings.tracing = TracingSettings(tracer: NoOpTracer(), samplingPercentage: p, node: "bench")
}
var logger = Logger(label: "weft-proxy-bench")
logger.logLevel = .warning
// Every connection to the bench's listener is taken as captured to the VIP. Istio's
// metrics are recorded, as by the agent with its default --metrics-port.
let metrics = IstioMetrics()
let proxy = ProxyRuntime(settings: settings, logger: logger, registry: metrics.registry, observer: { metrics.record($0) })
let outbound = OutboundListener(runtime: proxy, origin: { client in
    ConnectionOrigin(destination: h2ClientPorts.withLockedValue { $0.contains(client.port) } ? vipH2 : vip, cgroupID: 0)
})
proxy.update(ProxyTables(snapshot: snapshot, node: "bench"))
try outbound.start()
proxy.setAccepting(true) // as the agent does once its config is in

/// An HTTP/2 run through the proxy: the client's port is told to `origin` first.
func measureProxiedH2() -> Run {
    let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
    var have = 0, stream: UInt32 = 1
    let fd = loopbackSocket()
    var a = loopback(port: 0)
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            precondition(bind(fd, $0, len) == 0, "bind: \(errno)")
            _ = getsockname(fd, $0, &len)
        }
    }
    h2ClientPorts.withLockedValue { _ = $0.insert(UInt16(bigEndian: a.sin_port)) }
    var to = loopback(port: proxyPort)
    let r = withUnsafePointer(to: &to) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    precondition(r == 0 && writeAll(fd, h2Preface + h2Settings), "HTTP/2 connect to the proxy")
    precondition(runClientH2(fd, count: warmup, stream: &stream, buf: buf, have: &have), "warm-up HTTP/2 requests through the proxy failed")
    let a0 = weft_alloc_count(), c0 = cpuSeconds(), t0 = DispatchTime.now().uptimeNanoseconds
    precondition(runClientH2(fd, count: requests, stream: &stream, buf: buf, have: &have), "HTTP/2 requests through the proxy failed")
    let a1 = weft_alloc_count(), c1 = cpuSeconds(), t1 = DispatchTime.now().uptimeNanoseconds
    close(fd)
    return Run(allocations: Double(a1 - a0) / Double(requests), cpuMicros: (c1 - c0) * 1e6 / Double(requests),
               requestsPerSecond: Double(requests) / (Double(t1 - t0) / 1e9))
}

// `weft-proxy-bench REQUESTS h1|h2`: that protocol through the proxy only (for a profiler).
if CommandLine.arguments.count > 2, ["h1", "h2"].contains(CommandLine.arguments[2]) {
    let run = CommandLine.arguments[2] == "h1" ? measure(port: proxyPort) : measureProxiedH2()
    print(String(format: "{\"allocations_per_request\": %.1f, \"cpu_us_per_request\": %.1f}", run.allocations, run.cpuMicros))
    proxy.stop()
    exit(0)
}

let direct = measure(port: upstreamPort)
let proxied = measure(port: proxyPort)
let directH2 = measureH2(port: upstreamH2Port)
let proxiedH2 = measureProxiedH2()
proxy.stop()
precondition(metrics.registry.emitToString().contains("istio_requests_total{"), "no request was recorded in the metrics")

func fmt(_ x: Double) -> String { String(format: "%.1f", x) }
print("""
{"requests": \(requests), "parse": {\(parsing.joined(separator: ", "))}, \
"direct": {"allocations_per_request": \(fmt(direct.allocations)), "cpu_us_per_request": \(fmt(direct.cpuMicros)), "requests_per_second": \(Int(direct.requestsPerSecond))}, \
"weft": {"allocations_per_request": \(fmt(proxied.allocations)), "cpu_us_per_request": \(fmt(proxied.cpuMicros)), "requests_per_second": \(Int(proxied.requestsPerSecond))}, \
"direct_h2": {"allocations_per_request": \(fmt(directH2.allocations)), "cpu_us_per_request": \(fmt(directH2.cpuMicros)), "requests_per_second": \(Int(directH2.requestsPerSecond))}, \
"weft_h2": {"allocations_per_request": \(fmt(proxiedH2.allocations)), "cpu_us_per_request": \(fmt(proxiedH2.cpuMicros)), "requests_per_second": \(Int(proxiedH2.requestsPerSecond))}}
""")
