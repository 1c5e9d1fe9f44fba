import CLibbpf
import Glibc

/// A BPF link (program attached to a hook), possibly pinned in bpffs.
///
/// A pinned link outlives the process: the program stays attached until the pin is
/// removed and the last fd is closed. That is what lets the agent restart without a gap.
public final class BPFLink: @unchecked Sendable {
    let handle: OpaquePointer

    private init(handle: OpaquePointer) { self.handle = handle }

    deinit {
        // Closes our fd only; a pinned link stays attached.
        bpf_link__destroy(handle)
    }

    /// Attaches `program` of `object` to the cgroup open at `cgroupFD`.
    public static func attachCgroup(object: BPFObject, program: String, cgroupFD: Int32) throws -> BPFLink {
        let prog = try object.rawProgram(program)
        guard let link = bpf_program__attach_cgroup(prog, cgroupFD) else {
            throw BPFError.errno("attaching \(program) to the cgroup")
        }
        return BPFLink(handle: link)
    }

    /// Opens the link pinned at `path`, or nil if nothing is pinned there.
    public static func openPinned(_ path: String) throws -> BPFLink? {
        if access(path, F_OK) != 0 { return nil }
        guard let link = bpf_link__open(path) else {
            throw BPFError.errno("opening pinned link \(path)")
        }
        return BPFLink(handle: link)
    }

    /// Pins the link at `path`.
    public func pin(_ path: String) throws {
        let rc = bpf_link__pin(handle, path)
        if rc != 0 { throw BPFError.errno("pinning link at \(path)", rc) }
    }

    /// Removes the pin; the link detaches when its last fd closes.
    public func unpin() throws {
        let rc = bpf_link__unpin(handle)
        if rc != 0 { throw BPFError.errno("unpinning link", rc) }
    }

    /// Atomically replaces the attached program: no moment without a program attached.
    public func update(object: BPFObject, program: String) throws {
        let rc = bpf_link__update_program(handle, try object.rawProgram(program))
        if rc != 0 { throw BPFError.errno("replacing the program of link for \(program)", rc) }
    }
}

/// What the kernel reports about one pinned link and its program (for `weft prog show`).
public struct PinnedProgramInfo: Sendable, Codable {
    /// Pin path.
    public var pin: String
    /// Kernel link id.
    public var linkID: UInt32
    /// Kernel program id.
    public var progID: UInt32
    /// Program name.
    public var name: String
    /// Program type (e.g. cgroup_sock_addr).
    public var type: String
    /// Attach type (e.g. cgroup_inet4_connect).
    public var attachType: String
    /// Cgroup id the link is attached to.
    public var cgroupID: UInt64
    /// Program tag (hash of its instructions).
    public var tag: String
    /// When the program was loaded (seconds since boot).
    public var loadTimeNs: UInt64

    /// Reads link and program info for the link pinned at `path`.
    public init(pin path: String) throws {
        let fd = bpf_obj_get(path)
        if fd < 0 { throw BPFError.errno("opening pinned link \(path)") }
        defer { close(fd) }
        var link = bpf_link_info()
        var len = UInt32(MemoryLayout<bpf_link_info>.size)
        var rc = bpf_obj_get_info_by_fd(fd, &link, &len)
        if rc != 0 { throw BPFError.errno("reading link info of \(path)", rc) }
        let pfd = bpf_prog_get_fd_by_id(link.prog_id)
        if pfd < 0 { throw BPFError.errno("opening program id \(link.prog_id)") }
        defer { close(pfd) }
        var prog = bpf_prog_info()
        len = UInt32(MemoryLayout<bpf_prog_info>.size)
        rc = bpf_obj_get_info_by_fd(pfd, &prog, &len)
        if rc != 0 { throw BPFError.errno("reading program info of id \(link.prog_id)", rc) }
        pin = path
        linkID = link.id
        progID = link.prog_id
        name = withUnsafeBytes(of: prog.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        type = libbpf_bpf_prog_type_str(bpf_prog_type(prog.type)).map { String(cString: $0) } ?? "type \(prog.type)"
        let at = bpf_attach_type(link.cgroup.attach_type)
        attachType = libbpf_bpf_attach_type_str(at).map { String(cString: $0) } ?? "attach \(at.rawValue)"
        cgroupID = link.cgroup.cgroup_id
        tag = withUnsafeBytes(of: prog.tag) { $0.map { String(format2hex: $0) }.joined() }
        loadTimeNs = prog.load_time
    }
}

extension String {
    init(format2hex byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }
}
