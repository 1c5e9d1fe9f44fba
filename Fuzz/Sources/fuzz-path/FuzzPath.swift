// libFuzzer entry point: a request target → the path normalizer authorization reads.
// Besides crashes, it checks what policy relies on: a normalized path is absolute, has no
// empty, `.` or `..` segment and no control byte, and normalizing it again changes nothing
// (the workload is sent what was authorized).
import FuzzDriver
import WeftConfig

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPath(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let target = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let (path, query) = PathNormalizer.normalize(target) else { return 0 }
    // Checked on bytes, as servers read paths (a "/" followed by a combining mark is not
    // the Character "/" to Swift, but it is a slash to every server).
    let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
    guard path.utf8.first == slash else { fatalError("not absolute: \(path.debugDescription) from \(target.debugDescription)") }
    let segments = path.utf8.split(separator: slash, omittingEmptySubsequences: false).dropFirst()
    for (i, s) in segments.enumerated() where s.elementsEqual([dot]) || s.elementsEqual([dot, dot]) || (s.isEmpty && i != segments.count - 1) {
        fatalError("segment \(Array(s)) left in \(path.debugDescription) from \(target.debugDescription)")
    }
    if path.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "\\") }) {
        fatalError("control byte or backslash in \(path.debugDescription)")
    }
    let again = PathNormalizer.normalize(path + (query.map { "?" + $0 } ?? ""))
    guard let again, again.path == path, again.query == query else {
        fatalError("not idempotent: \(path.debugDescription) → \(String(describing: again))")
    }
    return 0
}

@_cdecl("fuzz_path_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzPath)
}
