// swift-tools-version:6.0
import PackageDescription

// libFuzzer harnesses, built by scripts/fuzz with -sanitize=fuzzer,address on every Swift
// target, so the code under test is instrumented for coverage:
//   fuzz-config  bytes → YAML → resources → validation (WeftConfig)
//   fuzz-path    a request target → the path normalizer authorization reads
//   fuzz-sniff   a connection's first bytes → the protocol sniffer
//   fuzz-trace   a request's trace fields (W3C, B3) → the trace context parser and what is sent on
//   fuzz-http1   a client's HTTP/1 bytes → the proxy's head handling at the destination
//   fuzz-http1-parser  a client's bytes → weft's own HTTP/1 parser, split reads and llhttp as oracles
//   fuzz-http1-response  an upstream's bytes → weft's own HTTP/1 response parser, the same oracles
//   fuzz-http2   a client's HTTP/2 frames → the proxy's frame-level HTTP/2 session at the destination
//   fuzz-dns     a workload's DNS query or a resolver's answer → the DNS wire format, responder and cache
// No top-level code in the harnesses: each defines its entry point and hands over to libFuzzer.
let harness: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "weft-fuzz",
    dependencies: [.package(name: "weft", path: "..")],
    targets: [
        .target(name: "FuzzDriver"),
        .executableTarget(name: "fuzz-config", dependencies: ["FuzzDriver", .product(name: "WeftConfig", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-path", dependencies: ["FuzzDriver", .product(name: "WeftConfig", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-trace", dependencies: ["FuzzDriver", .product(name: "WeftProxy", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-sniff", dependencies: ["FuzzDriver", .product(name: "WeftProxy", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-http1", dependencies: ["FuzzDriver", .product(name: "WeftProxy", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-http1-parser", dependencies: ["FuzzDriver", .product(name: "WeftProxy", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-http1-response", dependencies: ["FuzzDriver", .product(name: "WeftProxy", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-http2", dependencies: ["FuzzDriver", .product(name: "WeftProxy", package: "weft")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-dns", dependencies: ["FuzzDriver", .product(name: "WeftDNS", package: "weft")],
                          swiftSettings: harness),
    ]
)
