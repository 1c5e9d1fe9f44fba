// swift-tools-version:6.1
import PackageDescription

// Module graph (DESIGN.md): weft → WeftAgent → {WeftProxy, WeftDataplane → WeftBPF → CLibbpf},
// weft → WeftAgent → WeftIdentity (CA, workload certificates), weft → WeftAgent → WeftDNS
// (the workloads' DNS), weft → WeftAgent → WeftStore
// (etcd client, cluster mode), and
// everything → WeftConfig, which depends on nothing of ours.
let package = Package(
    name: "weft",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "weft", targets: ["weft"]),
        // For the fuzz harness in Fuzz/ (its own package, so libFuzzer's main stays out of
        // the normal build).
        .library(name: "WeftConfig", targets: ["WeftConfig"]),
        // For the proxy's fuzz harnesses (sniffer, HTTP/1): ProxyFuzzing's entry points.
        .library(name: "WeftProxy", targets: ["WeftProxy"]),
        // For the DNS message fuzz harness.
        .library(name: "WeftDNS", targets: ["WeftDNS"]),
    ],
    // Floors are the versions weft is built and tested with. swift-nio ≥ 2.100.0 and
    // swift-nio-http2 ≥ 1.44.0 are needed in any case: earlier ones let request heads with
    // bad framing and CR/LF/NUL in pseudo-headers through (request smuggling).
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        // Cluster mode's etcd client (WeftStore): gRPC over NIO, messages from etcd's protos.
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        // Telemetry: every metric through swift-metrics' API into one swift-prometheus
        // registry, exposed once.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // Tracing: the proxy speaks swift-distributed-tracing's API; the agent gives it
        // swift-otel's tracer (OTLP/gRPC only: the HTTP exporter would bring
        // async-http-client for nothing).
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPGRPC"]),
    ],
    targets: [
        // Debian's libbpf (libbpf-dev) through pkg-config.
        .systemLibrary(name: "CLibbpf", pkgConfig: "libbpf", providers: [.apt(["libbpf-dev"])]),
        // The one definition of every map key/value shared by the BPF C code and Swift.
        .systemLibrary(name: "CWeftABI", path: "bpf/include"),
        .target(name: "WeftBPF", dependencies: ["CLibbpf"]),
        .target(name: "WeftConfig", dependencies: ["Yams"]),
        .target(name: "WeftProxy", dependencies: [
            "WeftConfig",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ],
        // Release builds of the proxy skip the run-time exclusivity checks: 139.8k -> 131.5k
        // instructions per proxied request (callgrind, weft-proxy-bench, README). Debug builds
        // keep them, so the unit and integration tests and every fuzzer (all debug) still trap
        // on a violation; NIO and the other dependencies keep theirs in every build.
        swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]),
        // The node's DNS for workloads: wire format, mesh names, forwarder and cache.
        .target(name: "WeftDNS", dependencies: [
            "WeftConfig",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // etcd's v3 API (KV, Watch, Lease) over gRPC: the generated messages and stubs
        // (scripts/gen-etcd-protos) and a small client over them. Knows nothing of weft's
        // config; cluster mode's key layout lives with its users.
        .target(name: "WeftStore", dependencies: [
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
            .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .target(name: "WeftIdentity", dependencies: [
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
        ]),
        .plugin(name: "BPFObjects", capability: .buildTool()),
        .target(
            name: "WeftDataplane",
            dependencies: ["WeftBPF", "WeftConfig", "CWeftABI", .product(name: "Logging", package: "swift-log")],
            plugins: ["BPFObjects"]
        ),
        .target(
            name: "WeftAgent",
            dependencies: [
                "WeftDataplane", "WeftConfig", "WeftProxy", "WeftIdentity", "WeftStore", "WeftDNS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "weft",
            dependencies: [
                "WeftAgent", "WeftDataplane", "WeftConfig", "WeftIdentity", "WeftStore", "WeftProxy", "Yams",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // The in-process proxy benchmark (scripts/bench l7 runs it): allocations and CPU per
        // proxied request. CAllocCounter replaces malloc and friends in it, never in `weft`.
        .target(name: "CAllocCounter"),
        .executableTarget(
            name: "weft-proxy-bench",
            dependencies: [
                "WeftProxy", "WeftConfig", "CAllocCounter",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // The floor row of scripts/bench l7: the smallest forwarders on SwiftNIO, none of
        // weft's work, to split weft's gap to HAProxy into the runtime's and weft's own.
        .executableTarget(
            name: "weft-floor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // The corpus is read from the source tree by path (see CorpusTests), not bundled.
        .testTarget(name: "WeftConfigTests", dependencies: [
            "WeftConfig", .product(name: "PropertyBased", package: "swift-property-based"),
        ], exclude: ["corpus"]),
        .testTarget(name: "WeftProxyTests", dependencies: [
            "WeftProxy", "WeftConfig",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ]),
        .testTarget(name: "WeftAgentTests", dependencies: ["WeftAgent", "WeftDataplane", "WeftConfig", "CWeftABI"]),
        .testTarget(name: "WeftStoreTests", dependencies: ["WeftStore"]),
        .testTarget(name: "WeftDNSTests", dependencies: ["WeftDNS", "WeftConfig"]),
        .testTarget(name: "WeftIdentityTests", dependencies: [
            "WeftIdentity",
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "WeftDataplaneTests", dependencies: ["WeftDataplane", "WeftBPF", "CWeftABI", "CLibbpf", "WeftConfig"]),
    ]
)
