// libFuzzer entry point: a connection's first bytes → the protocol sniffer.
import FuzzDriver
import WeftProxy

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSniff(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ProxyFuzzing.sniff(bytes(data, size))
    return 0
}

@_cdecl("fuzz_sniff_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzSniff)
}
