import CLibbpf
import Glibc

/// What one probe found out about the running kernel.
public enum ProbeResult: Sendable, Equatable {
    case available
    /// The kernel lacks it; the text is the kernel's answer (e.g. "Invalid argument").
    case missing(String)
    /// The probe could not tell (not privileged, say); the text says why.
    case unknown(String)

    /// A probe's -errno: privilege errors cannot tell anything, the rest mean "no".
    static func from(_ rc: Int32) -> ProbeResult {
        if rc == 0 { return .available }
        let e = rc < 0 ? -rc : rc
        let text = String(cString: strerror(e))
        if e == EPERM { return .unknown("\(text): needs root or CAP_BPF") }
        return .missing(text)
    }
}

/// Probes of single kernel features by loading tiny programs and asking the bpf()
/// commands with no target. Nothing is attached to the node (see probe.h).
public enum KernelProbe {
    /// Whether the kernel loads a program of `type` expecting attach type `attach`.
    public static func program(type: bpf_prog_type, attach: bpf_attach_type) -> ProbeResult {
        var unknownHelper: Int32 = 0
        return .from(weft_probe_load(type, attach, -1, &unknownHelper))
    }

    /// Whether programs of `type`/`attach` may call helper `id`.
    public static func helper(_ id: Int32, type: bpf_prog_type, attach: bpf_attach_type) -> ProbeResult {
        var unknownHelper: Int32 = 0
        let rc = weft_probe_load(type, attach, id, &unknownHelper)
        if unknownHelper != 0 { return .missing("the verifier does not know it for this program type") }
        if rc == -EPERM { return .from(rc) }
        return .available  // loaded, or refused for the probe's nonsense arguments
    }

    /// Whether the kernel creates maps of `type` (libbpf's own probe).
    public static func mapType(_ type: bpf_map_type) -> ProbeResult {
        let rc = libbpf_probe_bpf_map_type(type, nil)
        if rc == 1 { return .available }
        if rc == 0 { return .missing("the kernel does not create such maps") }
        return .from(rc)
    }

    /// Atomics that return the old value (BPF_FETCH).
    public static func atomicFetch() -> ProbeResult {
        let rc = weft_probe_atomic_fetch()
        if rc == -EPERM { return .from(rc) }
        return rc == 0 ? .available : .missing("the verifier refuses them")
    }

    /// BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps.
    public static func hashLookupAndDelete() -> ProbeResult {
        let rc = weft_probe_hash_lookup_and_delete()
        switch -rc {
        case ENOENT: return .available  // it looked for the key
        case EPERM: return .from(rc)
        case BPFMap.enotsupp: return .missing("only queue and stack maps are taken from this way")
        default: return .missing(String(cString: strerror(-rc)))
        }
    }

    /// BPF_LINK_CREATE (cgroup links, which survive the agent when pinned).
    public static func linkCreate() -> ProbeResult { command(weft_probe_link_create()) }

    /// BPF_LINK_UPDATE (a restarted agent swaps programs under a link in one step).
    public static func linkUpdate() -> ProbeResult { command(weft_probe_link_update()) }

    private static func command(_ rc: Int32) -> ProbeResult {
        switch -rc {
        case EBADF: return .available  // the command exists and looked for our (absent) program
        case EPERM: return .from(rc)
        default: return .missing(String(cString: strerror(-rc)))
        }
    }

    /// TC on a throwaway network namespace's loopback.
    public struct TC: Sendable {
        /// clsact qdisc plus a cls_bpf direct-action filter (what weft attaches).
        public let clsact: ProbeResult
        /// A tcx link (Linux 6.6).
        public let tcx: ProbeResult
    }

    public static func tc() -> TC {
        var r = weft_tc_probe()
        weft_probe_tc(&r)
        if r.netns != 0 {
            let why = ProbeResult.from(r.netns)
            let text = "no network namespace to try it in (unshare: \(why.text))"
            return TC(clsact: .unknown(text), tcx: .unknown(text))
        }
        if r.program != 0 {
            let res = ProbeResult.from(r.program)
            return TC(clsact: res, tcx: res)
        }
        let clsact: ProbeResult = r.clsact != 0 ? .from(r.clsact)
            : r.filter != 0 ? .from(r.filter) : .available
        return TC(clsact: clsact, tcx: .from(r.tcx))
    }

    /// The name of helper `id` (bpf_...), or "helper #id".
    public static func helperName(_ id: Int32) -> String {
        if let n = weft_helper_name(id) { return String(cString: n) }
        return "helper #\(id)"
    }

    public static func programTypeName(_ t: bpf_prog_type) -> String {
        libbpf_bpf_prog_type_str(t).map { String(cString: $0) } ?? "program type \(t.rawValue)"
    }

    public static func mapTypeName(_ t: bpf_map_type) -> String {
        libbpf_bpf_map_type_str(t).map { String(cString: $0) } ?? "map type \(t.rawValue)"
    }

    /// The running kernel's release (uname -r).
    public static var kernelRelease: String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
    }
}

extension ProbeResult {
    /// The reason, or "" when available.
    public var text: String {
        switch self {
        case .available: return ""
        case .missing(let t), .unknown(let t): return t
        }
    }
}

extension BPFObject {
    /// A program of an opened object as the kernel will see it.
    public struct ProgramInfo: Sendable {
        public let name: String
        /// ELF section, e.g. "cgroup/connect4".
        public let section: String
        public let type: bpf_prog_type
        public let attach: bpf_attach_type
        /// The helper ids it calls.
        public let helpers: [Int32]
        /// Whether it has an atomic that returns the old value (Linux 5.12).
        public let usesAtomicFetch: Bool
    }

    /// Every program with its type, expected attach type and helper calls (before load).
    public var programInfo: [ProgramInfo] {
        var out: [ProgramInfo] = []
        var p = bpf_object__next_program(handle, nil)
        while let prog = p {
            var ids = [Int32](repeating: 0, count: 64)
            let n = Int(weft_program_helpers(prog, &ids, Int32(ids.count)))
            out.append(ProgramInfo(name: String(cString: bpf_program__name(prog)),
                                   section: String(cString: bpf_program__section_name(prog)),
                                   type: bpf_program__type(prog),
                                   attach: bpf_program__expected_attach_type(prog),
                                   helpers: Array(ids[0..<n]),
                                   usesAtomicFetch: weft_program_uses_atomic_fetch(prog) != 0))
            p = bpf_object__next_program(handle, prog)
        }
        return out
    }

    /// Every map the object defines (not the compiler's .rodata/.bss) with its type.
    public var mapInfo: [(name: String, type: bpf_map_type)] {
        var out: [(String, bpf_map_type)] = []
        var m = bpf_object__next_map(handle, nil)
        while let map = m {
            let name = String(cString: bpf_map__name(map))
            if !bpf_map__is_internal(map) { out.append((name, bpf_map__type(map))) }
            m = bpf_object__next_map(handle, map)
        }
        return out
    }
}
