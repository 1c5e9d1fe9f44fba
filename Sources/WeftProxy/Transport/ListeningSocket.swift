import NIOCore
import WeftConfig
#if canImport(Glibc)
import Glibc
#endif

/// A TCP listening socket the proxy creates itself and then hands to NIO
/// (ServerBootstrap.withBoundSocket): weft keeps its descriptor, so the kernel can be told
/// which socket is the agent's (TC steers only into those), and a failed bind says exactly
/// why — only a missing address family may be tolerated, never a port someone else holds.
enum ListeningSocket {
    struct Failure: Error, CustomStringConvertible {
        let call: String
        let code: Int32

        /// The host has no such address family (no IPv6 in the kernel, or ::1 absent
        /// because IPv6 is disabled), as opposed to the address being taken.
        var familyMissing: Bool { code == EAFNOSUPPORT || (call == "bind" && code == EADDRNOTAVAIL) }

        var description: String {
            let what = code == EADDRINUSE ? "the port is taken by another process (find it with `ss -ltnp`)" : String(cString: strerror(code))
            return "\(call): \(what)"
        }
    }

    /// A socket bound to `host:port` with SO_REUSEADDR (a restarted agent binds again at
    /// once over TIME_WAIT), IPv6-only for an IPv6 host unless `v6Only` is false (then
    /// "::" takes IPv4 too, as the kernel's default has it); NIO listens on it.
    static func bind(host: String, port: UInt16, v6Only: Bool = true) throws -> CInt {
        let address = try SocketAddress(ipAddress: host, port: Int(port))
        let v6 = address.protocol == .inet6
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        if fd < 0 { throw Failure(call: "socket", code: errno) }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size) != 0
            || (v6 && v6Only && setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, size) != 0) {
            let code = errno
            close(fd)
            throw Failure(call: "setsockopt", code: code)
        }
        let rc = address.withSockAddr { sa, len in Glibc.bind(fd, sa, socklen_t(len)) }
        if rc != 0 {
            let code = errno
            close(fd)
            throw Failure(call: "bind", code: code)
        }
        return fd
    }

    /// How many accepted-but-not-yet-taken connections a proxy listener queues. NIO
    /// listens on a socket it is handed (withBoundSocket) with its default of 128 and
    /// applies `.backlog` only to sockets it binds itself; at 128 a connect flood from one
    /// host overflowed the queue, and the kernel then drops every client's SYN alike (a
    /// meshed client's too, each costing it a 1 s retransmit).
    static let backlog: Int32 = 1024

    /// Sets the accept queue of `fd`, listening already (NIO's): a second listen() on a
    /// listening socket only resizes its queue.
    static func setBacklog(_ fd: CInt) throws {
        if Glibc.listen(fd, backlog) != 0 { throw Failure(call: "listen", code: errno) }
    }
}
