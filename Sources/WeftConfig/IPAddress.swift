import Glibc

/// An IPv4 or IPv6 address in network byte order; IPv4 uses the first 4 bytes.
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// 4 or 6.
    public let family: UInt8
    /// 16 bytes, network order; for IPv4 bytes 4..15 are zero.
    public let bytes: [UInt8]

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text; nil if it is neither.
    public init?(_ text: String) {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            family = 4
            bytes = withUnsafeBytes(of: v4) { Array($0) } + [UInt8](repeating: 0, count: 12)
        } else if inet_pton(AF_INET6, text, &v6) == 1 {
            family = 6
            bytes = withUnsafeBytes(of: v6) { Array($0) }
        } else {
            return nil
        }
    }

    /// From raw bytes as stored in BPF maps.
    public init(family: UInt8, bytes: [UInt8]) {
        self.family = family
        var b = Array(bytes.prefix(16))
        b += [UInt8](repeating: 0, count: 16 - b.count)
        self.bytes = b
    }

    /// Canonical text (inet_ntop).
    public var description: String {
        // On the stack: the proxy formats addresses for every request's telemetry, and an
        // IPv4 address (≤ 15 bytes) then needs no allocation at all.
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { buf in
            let af = family == 4 ? AF_INET : AF_INET6
            buf[0] = 0
            _ = bytes.withUnsafeBytes { inet_ntop(af, $0.baseAddress, buf.baseAddress, socklen_t(buf.count)) }
            return String(cString: buf.baseAddress!)
        }
    }

    /// The 16 bytes in one go: the synthesized hash fed them to the hasher one by one,
    /// ~3.5k instructions per proxied request for the proxy's endpoint and pool lookups
    /// (callgrind, weft-proxy-bench).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(family)
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    public static func == (a: IPAddress, b: IPAddress) -> Bool {
        a.family == b.family && a.bytes == b.bytes
    }

    /// IPv4 before IPv6, then bytewise.
    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        a.family != b.family ? a.family < b.family : a.bytes.lexicographicallyPrecedes(b.bytes)
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPAddress(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IP address: \(text)"))
        }
        self = a
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// `addr:port`, with brackets for IPv6.
    public func withPort(_ port: UInt16) -> String {
        // Appended, not interpolated: a result of up to 15 bytes stays a small string.
        var text = family == 6 ? "[" + description + "]" : description
        text += ":"
        text += String(port)
        return text
    }

    /// Parses `addr:port` or `[v6]:port`.
    public static func parseEndpoint(_ text: String) -> (IPAddress, UInt16)? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let a = IPAddress(String(host)), let p = UInt16(portText), p > 0 else { return nil }
        return (a, p)
    }
}
