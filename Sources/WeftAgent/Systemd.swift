import Foundation
import Glibc
import Logging

/// What systemd needs from a `Type=notify` service, without libsystemd: sd_notify's
/// datagrams to $NOTIFY_SOCKET (a path, or an abstract name written "@name"), and log
/// lines the journal files at the right priority.
public enum Systemd {
    /// Sends `state` ("READY=1", "STOPPING=1", "STATUS=…", newline-separated) if systemd
    /// asked for it; false when not run by systemd or the send failed.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty,
              path.hasPrefix("/") || path.hasPrefix("@") else { return false }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 } // abstract namespace
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // An abstract name's length counts exactly; a path's may include its NUL.
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes[0] == 0 ? 0 : 1))
        let sent = Array(state.utf8).withUnsafeBytes { msg in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, msg.baseAddress, msg.count, Int32(MSG_NOSIGNAL), $0, len) }
            }
        }
        return sent == state.utf8.count
    }

    /// Whether standard error goes to the journal (systemd sets JOURNAL_STREAM to its
    /// device:inode): then log lines carry a priority prefix and no timestamp of their own.
    public static var loggingToJournal: Bool {
        guard let stream = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return stream == "\(st.st_dev):\(st.st_ino)"
    }
}

/// Log lines for the journal: `<priority>message key=value …` (sd-daemon(3)'s prefixes),
/// one line each; the journal adds the time, unit and pid.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    private let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        let all = metadata.merging(extra ?? [:]) { $1 }
        var text = "<\(Self.priority(level))>\(message)"
        for (k, v) in all.sorted(by: { $0.key < $1.key }) { text += " \(k)=\(v)" }
        // A message with newlines would become several journal entries, the later ones
        // without a priority: keep it one line.
        text = text.replacingOccurrences(of: "\n", with: " ")
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
