import CLibbpf
import Glibc

/// A BPF program on an interface's TC ingress hook (clsact qdisc, direct action),
/// attached through libbpf's netlink API. Unlike a link it is not tied to a file
/// descriptor: it stays attached after the agent exits until it is detached, and a new
/// agent replaces it in place (same handle and priority), so there is no moment without
/// a program.
public struct BPFTCFilter: Sendable {
    /// Interface name.
    public let interface: String
    public let ifindex: Int32
    public let handle: UInt32
    public let priority: UInt32

    /// Names a filter place (it need not exist).
    public init(interface: String, ifindex: Int32, handle: UInt32, priority: UInt32) {
        self.interface = interface
        self.ifindex = ifindex
        self.handle = handle
        self.priority = priority
    }

    /// The interface index of `name` in this network namespace.
    public static func ifindex(_ name: String) throws -> Int32 {
        let i = if_nametoindex(name)
        if i == 0 { throw BPFError("no network interface \(name) in this network namespace") }
        return Int32(i)
    }

    /// Whether `name` is an Ethernet interface (frames start with a 14-byte MAC header)
    /// rather than a layer-3 one (tun, wireguard: packets start with the IP header).
    public static func isEthernet(_ name: String) throws -> Bool {
        let t = weft_if_arptype(name)
        if t < 0 { throw BPFError.errno("reading the type of interface \(name)") }
        return t == 1 /* ARPHRD_ETHER */
    }

    /// Attaches `program` of a loaded `object` to `interface`'s ingress, creating the
    /// clsact qdisc if there is none and replacing a filter at the same handle/priority.
    public static func attachIngress(object: BPFObject, program: String, interface: String, handle: UInt32, priority: UInt32) throws -> BPFTCFilter {
        let filter = BPFTCFilter(interface: interface, ifindex: try ifindex(interface), handle: handle, priority: priority)
        var hook = filter.hook
        var rc = bpf_tc_hook_create(&hook)
        if rc != 0 && rc != -EEXIST { throw BPFError.errno("creating the clsact qdisc on \(interface)", rc) }
        var opts = filter.opts
        opts.prog_fd = bpf_program__fd(try object.rawProgram(program))
        opts.flags = UInt32(BPF_TC_F_REPLACE.rawValue)
        rc = bpf_tc_attach(&hook, &opts)
        if rc != 0 { throw BPFError.errno("attaching \(program) to TC ingress of \(interface)", rc) }
        return filter
    }

    /// Removes the filter (the clsact qdisc stays: other filters may live on it).
    public func detach() throws {
        var hook = self.hook
        var opts = self.opts
        let rc = bpf_tc_detach(&hook, &opts)
        if rc != 0 && rc != -ENOENT { throw BPFError.errno("detaching the TC filter from \(interface)", rc) }
    }

    private var hook: bpf_tc_hook {
        var h = bpf_tc_hook()
        // Up to the last field only: libbpf rejects non-zero bytes past the fields it
        // knows, and Swift does not promise what a struct's tail padding holds.
        h.sz = MemoryLayout<bpf_tc_hook>.offset(of: \bpf_tc_hook.parent)! + MemoryLayout<UInt32>.size
        h.ifindex = ifindex
        h.attach_point = BPF_TC_INGRESS
        return h
    }

    private var opts: bpf_tc_opts {
        var o = bpf_tc_opts()
        o.sz = MemoryLayout<bpf_tc_opts>.offset(of: \bpf_tc_opts.priority)! + MemoryLayout<UInt32>.size
        o.handle = handle
        o.priority = priority
        return o
    }
}
