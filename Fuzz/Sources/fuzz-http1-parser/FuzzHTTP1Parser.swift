// libFuzzer entry point: a client's bytes → weft's own HTTP/1 request parser, checked
// against itself (split reads) and against NIO's parser (never more lenient).
import FuzzDriver
import WeftProxy

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Parser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ProxyFuzzing.http1Parser(bytes(data, size))
    return 0
}

@_cdecl("fuzz_http1_parser_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzHTTP1Parser)
}
