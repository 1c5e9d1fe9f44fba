/// WeftBPF: Swift over libbpf — objects loaded from memory, typed map access, cgroup
/// links, pins under bpffs, and kernel feature probes. It knows nothing of services.
import CLibbpf
import Glibc

/// A failure of a BPF operation, as one line: what failed, on what, and why.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    /// The one-line message shown to operators.
    public let description: String
    /// The errno behind it, if a call failed with one.
    public let code: Int32?

    /// Creates an error with a complete message.
    public init(_ message: String) { description = message; code = nil }

    init(_ message: String, code: Int32) { description = message; self.code = code }

    /// An error for a libbpf/syscall call that set errno (or returned -errno).
    public static func errno(_ what: String, _ code: Int32 = Glibc.errno) -> BPFError {
        let e = code < 0 ? -code : code
        return BPFError("\(what): \(String(cString: strerror(e)))", code: e)
    }
}
