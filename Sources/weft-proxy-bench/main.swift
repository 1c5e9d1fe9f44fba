// weft-proxy-bench: what one proxied HTTP/1.1 request costs the agent's proxy, in heap
// allocations and CPU time, measured in one process with no kernel hooks (scripts/bench
// prints it next to the peers' table). The proxy is weft's own (OutboundProxy with the
// bench's VirtualService route, one event loop, Istio's metrics recorded); the client and the upstream are plain
// blocking sockets on their own threads that allocate nothing per request, so every
// allocation counted while the requests run is the proxy's (and NIO's under it). The
// "direct" row — the same client and upstream with no proxy between — proves that: it
// must read 0.
//
//   weft-proxy-bench [REQUESTS]      (default 20000; prints one JSON object)
//   weft-proxy-bench REQUESTS nio|weft|channel_only   one parser alone, for a profiler
import CAllocCounter
import Foundation
import Logging
import NIOCore
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
let parsing = measureParsers(ProxyBenchmarks.Parser.allCases)

let (upstreamFD, upstreamPort) = listenLoopback()
Thread { serveUpstream(upstreamFD) }.start()

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
"""
let snapshot: Snapshot
do {
    snapshot = try ConfigLoader.snapshot(ConfigLoader.parse(text: yaml, file: "bench.yaml"), revision: 1)
} catch {
    fatalError("the bench config does not validate: \(error)")
}
let vip = SocketKey(IPAddress("10.96.0.1")!, 80)
let proxyPort = freePort()
var settings = OutboundProxy.Settings(port: proxyPort, agentMark: 0, threads: 1)
var logger = Logger(label: "weft-proxy-bench")
logger.logLevel = .warning
// Every connection to the bench's listener is taken as captured to the VIP. Istio's
// metrics are recorded, as by the agent with its default --metrics-port.
let metrics = IstioMetrics()
let proxy = OutboundProxy(settings: settings, logger: logger, origin: { _ in ConnectionOrigin(destination: vip, cgroupID: 0) },
                          observer: { metrics.record($0) })
proxy.update(ProxyTables(snapshot: snapshot, node: "bench"))
try proxy.start()

let direct = measure(port: upstreamPort)
let proxied = measure(port: proxyPort)
proxy.stop()
precondition(metrics.render().contains("istio_requests_total{"), "no request was recorded in the metrics")

func fmt(_ x: Double) -> String { String(format: "%.1f", x) }
print("""
{"requests": \(requests), "parse": {\(parsing.joined(separator: ", "))}, \
"direct": {"allocations_per_request": \(fmt(direct.allocations)), "cpu_us_per_request": \(fmt(direct.cpuMicros)), "requests_per_second": \(Int(direct.requestsPerSecond))}, \
"weft": {"allocations_per_request": \(fmt(proxied.allocations)), "cpu_us_per_request": \(fmt(proxied.cpuMicros)), "requests_per_second": \(Int(proxied.requestsPerSecond))}}
""")
