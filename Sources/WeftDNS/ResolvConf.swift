import WeftConfig

/// What the node's /etc/resolv.conf says (resolv.conf(5)): the nameservers the agent
/// forwards to, the search domains it strips, the timeout and attempts it waits with.
public struct ResolvConf: Equatable, Sendable {
    public var nameservers: [IPAddress] = []
    public var search: [String] = []
    /// Seconds to wait for one server (options timeout:N; glibc's default 5).
    public var timeout = 5
    /// Rounds over the servers (options attempts:N; glibc's default 2).
    public var attempts = 2

    public init(nameservers: [IPAddress] = [], search: [String] = [], timeout: Int = 5, attempts: Int = 2) {
        self.nameservers = nameservers
        self.search = search
        self.timeout = timeout
        self.attempts = attempts
    }

    /// Reads the file's text. As glibc does: the last `search` or `domain` line wins, at
    /// most 3 nameservers are used, unknown lines and options are ignored; an address with
    /// a zone (`fe80::1%eth0`) is skipped (the agent dials by address only). No nameserver
    /// at all means the local one, 127.0.0.1.
    public init(parsing text: String) {
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.split(maxSplits: 1, omittingEmptySubsequences: false, whereSeparator: { $0 == "#" || $0 == ";" }).first ?? ""
            let words = line.split(whereSeparator: { $0.isWhitespace }).map(String.init)
            guard let keyword = words.first else { continue }
            switch keyword {
            case "nameserver":
                if words.count > 1, let ip = IPAddress(words[1]), nameservers.count < 3 { nameservers.append(ip) }
            case "search":
                search = Array(words.dropFirst())
            case "domain":
                search = Array(words.dropFirst().prefix(1))
            case "options":
                for o in words.dropFirst() {
                    if o.hasPrefix("timeout:"), let n = Int(o.dropFirst(8)) { timeout = min(max(n, 1), 30) }
                    if o.hasPrefix("attempts:"), let n = Int(o.dropFirst(9)) { attempts = min(max(n, 1), 5) }
                }
            default:
                continue
            }
        }
        if nameservers.isEmpty { nameservers = [IPAddress("127.0.0.1")!] }
    }
}
