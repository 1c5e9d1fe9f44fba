// libFuzzer entry point: an upstream's bytes → weft's own HTTP/1 response parser, checked
// against itself (split reads) and against NIO's response decoder (never more lenient).
import FuzzDriver
import WeftProxy

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Response(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ProxyFuzzing.http1ResponseParser(bytes(data, size))
    return 0
}

@_cdecl("fuzz_http1_response_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzHTTP1Response)
}
