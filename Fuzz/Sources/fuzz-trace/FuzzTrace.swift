// libFuzzer entry point: a request's trace fields → the trace context parser and the
// fields the proxy sends on.
import FuzzDriver
import WeftProxy

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTrace(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ProxyFuzzing.traceContext(bytes(data, size))
    return 0
}

@_cdecl("fuzz_trace_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzTrace)
}
