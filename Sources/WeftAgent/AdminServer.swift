import Foundation
import Glibc
import Logging

/// The admin socket: a Unix stream socket (mode 0600). Each connection carries one JSON
/// request line and gets one JSON response line. Non-root peers are refused (SO_PEERCRED),
/// requests are bounded in size and time, and anything malformed is answered with an error.
final class AdminServer: @unchecked Sendable {
    private let fd: Int32
    private let path: String
    private var stopped = false

    /// `stream` takes the connections of requests that are answered with a stream
    /// (`weft monitor`): it owns the descriptor and writes every line itself.
    init(path: String, logger: Logger, stream: @escaping @Sendable (AdminRequest, Int32) -> Void = { _, fd in close(fd) },
         handle: @escaping @Sendable (AdminRequest) -> AdminResponse) throws {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw AgentError("admin socket path \(path) is too long (--admin-socket)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in raw.copyBytes(from: bytes + [0]) }
        let old = umask(0o177) // the socket file is created 0600
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        umask(old)
        if rc != 0 || listen(fd, 16) != 0 {
            let e = errno
            close(fd)
            throw AgentError("cannot listen on admin socket \(path) (--admin-socket): \(String(cString: strerror(e)))")
        }
        Thread { [self] in
            while !stopped {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 250) > 0 else { continue }
                let c = accept(fd, nil, nil)
                if c < 0 { continue }
                var cred = PeerCred()
                var len = socklen_t(MemoryLayout<PeerCred>.size)
                let response: AdminResponse
                var tv = timeval(tv_sec: AdminLimits.readTimeoutSeconds, tv_usec: 0)
                setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                if getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != 0 {
                    logger.warning("admin request refused: peer is not root", metadata: ["component": "admin", "uid": "\(cred.uid)", "pid": "\(cred.pid)"])
                    // Read (a little of) the request first, so the client sees this answer
                    // instead of a broken pipe.
                    _ = AdminClient.readAll(c, limit: 64 << 10)
                    response = .failure("the admin socket serves root only")
                } else {
                    let data = AdminClient.readAll(c, limit: AdminLimits.maxRequestBytes)
                    if data.count > AdminLimits.maxRequestBytes {
                        response = .failure("request larger than \(AdminLimits.maxRequestBytes >> 20) MiB")
                    } else if data.isEmpty {
                        response = .failure("empty request (send one JSON object per line)")
                    } else {
                        do {
                            let request = try JSONDecoder().decode(AdminRequest.self, from: data)
                            if request.op == .monitor || request.op == .handover {
                                stream(request, c)
                                continue
                            }
                            response = handle(request)
                        } catch {
                            response = .failure("malformed request: \(error)")
                        }
                    }
                }
                Self.sendLine(c, response)
                close(c)
            }
            close(fd)
        }.start()
        logger.info("admin socket listening", metadata: ["component": "admin", "path": "\(path)"])
    }

    /// Stops serving; `unlink` false leaves the path (after a handover it is the new
    /// agent's socket).
    func stop(unlink remove: Bool = true) {
        stopped = true
        if remove { unlink(path) }
    }
}

extension AdminServer {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        e.dateEncodingStrategy = .iso8601
        return e
    }()

    /// Writes one response line to an admin connection; false if the peer is gone.
    @discardableResult
    static func sendLine(_ fd: Int32, _ response: AdminResponse) -> Bool {
        var out = (try? encoder.encode(response)) ?? Data("{\"ok\":false}".utf8)
        out.append(0x0a)
        return sendAll(fd, out)
    }

    /// Writes all of `data` (a stream's lines), never raising SIGPIPE; false if the peer
    /// is gone.
    static func sendAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
    }
}

/// struct ucred (glibc hides it behind _GNU_SOURCE): what SO_PEERCRED returns.
private struct PeerCred {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
