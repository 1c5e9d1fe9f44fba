// libFuzzer entry point: a client's bytes → the proxy's HTTP/1 head and body handling at
// a tunnel's destination (hostile-input checks, normalization, authorization, routing).
import FuzzDriver
import WeftProxy

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ProxyFuzzing.http1(bytes(data, size))
    return 0
}

@_cdecl("fuzz_http1_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzHTTP1)
}
