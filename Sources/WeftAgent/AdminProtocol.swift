import Foundation
import Glibc
import WeftConfig
import WeftIdentity
import WeftProxy

/// A policy file as the operator's `weft` read it; the agent parses it again itself.
public struct SourceFile: Codable, Sendable {
    public var path: String
    public var text: String
    public init(path: String, text: String) {
        self.path = path
        self.text = text
    }
}

/// One request on the admin socket: a JSON object on one line.
public struct AdminRequest: Codable, Sendable {
    public enum Op: String, Codable, Sendable { case status, apply, delete, get, diff, history, rollback, certificates, authz, graph, monitor, handover }
    public var op: Op
    public var files: [SourceFile]?
    public var ids: [ResourceID]?
    public var kind: String?
    public var name: String?
    public var namespace: String?
    public var revision: UInt64?
    public var authz: AuthzQuery?
    /// `weft graph`: seconds the rates are over.
    public var window: Double?
    /// `weft monitor`: which flows to send.
    public var filter: FlowFilter?

    public init(op: Op) { self.op = op }
}

/// `weft authz check`: a hypothetical request to one workload.
public struct AuthzQuery: Codable, Sendable {
    /// The caller's SPIFFE URI (nil: plaintext).
    public var from: String?
    /// NAMESPACE/NAME of the destination WorkloadEntry.
    public var to: String
    public var port: UInt16
    public var sourceIP: String?
    /// Both nil: a plain TCP connection.
    public var method: String?
    public var path: String?
    public var host: String?

    public init(from: String?, to: String, port: UInt16) {
        self.from = from
        self.to = to
        self.port = port
    }
}

/// The decision and what made it.
public struct AuthzAnswer: Codable, Sendable {
    public var allowed: Bool
    public var reason: String
    public var policy: String?
    public var rule: Int?
    public var audited: [String]
    /// The path as normalized before matching (HTTP).
    public var normalizedPath: String?
    /// How many policies apply to the workload.
    public var policies: [String]
}

/// A resource as `weft get` shows it.
public struct StoredResource: Codable, Sendable {
    public var id: ResourceID
    public var origin: String
    public var yaml: String
}

/// What `weft diff` reports per resource.
public struct DiffEntry: Codable, Sendable {
    public enum Change: String, Codable, Sendable { case added, changed, unchanged }
    public var id: ResourceID
    public var change: Change
    public var current: String?
    public var proposed: String
}

/// The answer: `ok`, or `error` plus diagnostics.
public struct AdminResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    public var diagnostics: [Diagnostic]?
    public var revision: UInt64?
    /// Whether the request changed the config (an apply of what is already there does not).
    public var changed: Bool?
    /// How long programming the datapath took, for apply/delete/rollback.
    public var datapathMs: Double?
    public var status: AgentStatus?
    public var resources: [StoredResource]?
    public var history: [RevisionSummary]?
    public var diff: [DiffEntry]?
    public var certificates: [CertificateInfo]?
    public var authz: AuthzAnswer?
    public var graph: ServiceGraph?
    /// `weft monitor`: the stream's first line; flows follow, one per line.
    public var monitor: MonitorInfo?
    /// A handover: the listening sockets that follow (SCM_RIGHTS), by "HOST PORT".
    public var handover: [String]?

    public init(ok: Bool, error: String? = nil) {
        self.ok = ok
        self.error = error
    }

    static func failure(_ message: String, _ diagnostics: [Diagnostic]? = nil) -> AdminResponse {
        var r = AdminResponse(ok: false, error: message)
        r.diagnostics = diagnostics
        return r
    }
}

/// Limits of the admin socket.
enum AdminLimits {
    /// Largest request accepted (a generous config push; the agent never buffers more).
    static let maxRequestBytes = 64 << 20
    /// A client that sends nothing for this long is dropped.
    static let readTimeoutSeconds = 10
}

/// The client side: one request, one response.
public enum AdminClient {
    public static func send(_ request: AdminRequest, socket path: String) throws -> AdminResponse {
        let fd = try open(request, socket: path)
        defer { close(fd) }
        let reply = readAll(fd, limit: Int.max)
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        guard let response = try? dec.decode(AdminResponse.self, from: reply) else {
            let text = String(decoding: reply, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw AgentError(text.isEmpty ? "the agent closed the connection without an answer" : "the agent answered: \(text)")
        }
        return response
    }

    /// A connected admin socket, or the errno of the failed connect().
    public static func connect(_ path: String) throws -> Result<Int32, Errno> {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw AgentError("admin socket path \(path) is too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 {
            let e = errno
            close(fd)
            return .failure(Errno(e))
        }
        return .success(fd)
    }

    /// Connects and sends `request` (its whole line, then half-closes unless the reply is
    /// a stream: the agent takes a stream's reader hanging up for its end): the reply is
    /// the caller's to read — one line, or a stream (`weft monitor`).
    public static func open(_ request: AdminRequest, socket path: String) throws -> Int32 {
        let fd: Int32
        switch try connect(path) {
        case .success(let f): fd = f
        case .failure(let e):
            throw AgentError("cannot reach the agent at \(path): \(e) — is `weft agent` running? (--admin-socket)")
        }
        do {
            try write(request, to: fd, halfClose: request.op != .monitor && request.op != .handover)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    static func write(_ request: AdminRequest, to fd: Int32, halfClose: Bool) throws {
        var data = try JSONEncoder().encode(request)
        data.append(0x0a)
        try data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n <= 0 { throw AgentError("writing to the agent failed: \(String(cString: strerror(errno)))") }
                off += n
            }
        }
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }
    }

    /// errno as a value with its text.
    public struct Errno: Error, CustomStringConvertible, Sendable {
        public let code: Int32
        init(_ code: Int32) { self.code = code }
        public var description: String { String(cString: strerror(code)) }
    }

    static func readAll(_ fd: Int32, limit: Int) -> Data {
        var out = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count <= limit {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
            if out.last == 0x0a { break }
        }
        return out
    }
}
