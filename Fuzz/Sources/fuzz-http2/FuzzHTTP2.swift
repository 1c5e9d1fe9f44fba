// libFuzzer entry point: a client's HTTP/2 frames → NIO's handler and the proxy's own
// frame-level session at a tunnel's destination (streams, flow control, heads made from
// header blocks, hostile-input checks, authorization, routing).
import FuzzDriver
import WeftProxy

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ProxyFuzzing.http2(bytes(data, size))
    return 0
}

@_cdecl("fuzz_http2_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzHTTP2)
}
