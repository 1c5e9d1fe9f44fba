// libFuzzer entry point: bytes as a workload's DNS query and as a resolver's answer → the
// DNS wire format, the agent's responder and its cache.
import FuzzDriver
import WeftDNS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDNS(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    DNSFuzzing.message(bytes(data, size))
    return 0
}

@_cdecl("fuzz_dns_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzDNS)
}
