// libFuzzer entry point: arbitrary bytes → YAML → resources → validation → stored form.
// Any crash, trap or sanitizer report is a bug; diagnostics are the expected outcome.
import FuzzDriver
import WeftConfig

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let parsed = ConfigLoader.parse(text: text, file: "fuzz.yaml")
    _ = try? ConfigLoader.snapshot(parsed, revision: 1)
    // What a revision persists must decode again to the same resource.
    for d in parsed.documents {
        let again = ConfigLoader.parse(text: d.yaml, file: "stored.yaml")
        if again.resources.count != 1 || again.resources[0].id != d.resource.id {
            fatalError("stored form of \(d.resource.id) does not decode back:\n\(d.yaml)")
        }
    }
    return 0
}

/// SwiftPM links an executable's `main` to `<target>_main`; this is it.
@_cdecl("fuzz_config_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzConfig)
}
