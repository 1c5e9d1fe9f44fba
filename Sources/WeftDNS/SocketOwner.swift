import Glibc
import NIOCore

/// Whose a query is: the cgroup of the local socket that sent it, asked of the kernel with
/// NETLINK_SOCK_DIAG (an exact lookup by the socket's addresses; the reply carries
/// INET_DIAG_CGROUP_ID). The kernel sends workloads' queries to the agent from loopback,
/// so the source address tells nothing, and a socket the workload bound itself cannot be
/// re-bound to the workload's address; its cgroup is what the agent knows workloads by.
/// Asked only when the answer depends on it (a one-label name). One netlink socket, used
/// from the DNS server's loop.
final class SocketOwner: @unchecked Sendable {
    private let fd: CInt

    init?() {
        fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4) // NETLINK_SOCK_DIAG (linux/netlink.h, not in Glibc's module)
        guard fd >= 0 else { return nil }
        // The kernel answers at once; a lost answer must not stall the DNS server's loop.
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// The cgroup id of the local socket at `peer` that is in touch with ours at `local`,
    /// over `proto` (IPPROTO_UDP or IPPROTO_TCP); nil if there is none (it closed) or the
    /// kernel does not say.
    func cgroup(proto: Int32, peer: SocketAddress, local: SocketAddress) -> UInt64? {
        guard let (family, peerAddr, peerPort) = Self.parts(peer), let (lfamily, localAddr, localPort) = Self.parts(local), family == lfamily else {
            return nil
        }
        // The lookup is from the found socket's side for TCP (its local end first) and
        // from the receiver's side for UDP (udp_dump_one looks up who would receive from
        // src at dst): either way the workload's socket is the one found.
        let (src, sport, dst, dport) = proto == IPPROTO_TCP ? (peerAddr, peerPort, localAddr, localPort) : (localAddr, localPort, peerAddr, peerPort)
        var req: [UInt8] = []
        func u16(_ v: UInt16) { withUnsafeBytes(of: v) { req += $0 } }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v) { req += $0 } }
        let length = 16 + 56
        u32(UInt32(length))                    // nlmsghdr.nlmsg_len
        u16(20)                                // SOCK_DIAG_BY_FAMILY
        u16(1)                                 // NLM_F_REQUEST
        u32(1)                                 // seq
        u32(0)                                 // pid: the kernel
        req += [UInt8(family), UInt8(proto), 0, 0]
        u32(0xFFFF_FFFF)                       // any state
        req += [UInt8(sport >> 8), UInt8(sport & 0xFF), UInt8(dport >> 8), UInt8(dport & 0xFF)]
        req += src + dst
        u32(0)                                 // any interface
        u32(0xFFFF_FFFF); u32(0xFFFF_FFFF)     // INET_DIAG_NOCOOKIE
        guard send(fd, req, req.count, 0) == req.count else { return nil }
        var buf = [UInt8](repeating: 0, count: 1024)
        let n = recv(fd, &buf, buf.count, 0)
        guard n >= 16 else { return nil }
        return Self.cgroupID(in: Array(buf[..<n]))
    }

    /// INET_DIAG_CGROUP_ID of the first message of a reply, if it is an inet_diag_msg.
    static func cgroupID(in reply: [UInt8]) -> UInt64? {
        func u16(_ at: Int) -> UInt16 { UInt16(reply[at]) | UInt16(reply[at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        let length = Int(u32(0))
        guard length <= reply.count, u16(4) == 20 else { return nil } // not NLMSG_ERROR, NLMSG_DONE
        var at = 16 + 72 // nlmsghdr, inet_diag_msg
        while at + 4 <= length {
            let len = Int(u16(at)), type = u16(at + 2) & 0x3FFF
            guard len >= 4, at + len <= length else { return nil }
            if type == 21, len >= 12 { return UInt64(u32(at + 4)) | UInt64(u32(at + 8)) << 32 } // INET_DIAG_CGROUP_ID
            at += (len + 3) & ~3
        }
        return nil
    }

    /// Family, 16 address bytes (network order, IPv4 in the first 4) and port of `a`.
    private static func parts(_ a: SocketAddress) -> (Int32, [UInt8], UInt16)? {
        switch a {
        case .v4(let v):
            var addr = v.address.sin_addr
            let bytes = withUnsafeBytes(of: &addr) { Array($0) }
            return (AF_INET, bytes + [UInt8](repeating: 0, count: 12), UInt16(bigEndian: v.address.sin_port))
        case .v6(let v):
            var addr = v.address.sin6_addr
            let bytes = withUnsafeBytes(of: &addr) { Array($0) }
            return (AF_INET6, bytes, UInt16(bigEndian: v.address.sin6_port))
        default:
            return nil
        }
    }
}
