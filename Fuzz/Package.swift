// swift-tools-version:6.0
import PackageDescription

// libFuzzer harness for the config layer. Built by scripts/fuzz with -sanitize=fuzzer,address
// on every Swift target, so WeftConfig itself is instrumented for coverage.
let package = Package(
    name: "weft-fuzz",
    dependencies: [.package(name: "weft", path: "..")],
    targets: [
        .executableTarget(
            name: "fuzz-config",
            dependencies: [.product(name: "WeftConfig", package: "weft")],
            // No top-level code: the entry point is defined below and hands over to libFuzzer.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ]
)
