import NIOCore
import NIOHPACK
import NIOHTTP1

/// The client end of an exchange: an HTTP/1.1 connection (HTTP1ProxyHandler) or one
/// stream of an HTTP/2 connection (HTTP2ServerStream). The exchange answers through it
/// and holds the client's request body back through it.
protocol ExchangeClient: AnyObject {
    var conn: ConnectionContext { get }
    /// The client speaks HTTP/2.
    var http2: Bool { get }
    /// The loop the client lives on (nil once it is gone).
    var eventLoop: EventLoop? { get }
    /// Whether the client can take more of the response now.
    var isWritable: Bool { get }
    /// The client is written HTTP/1 heads from the bytes an upstream sent (writeForwarded).
    var forwardsHTTP1Heads: Bool { get }
    func write(_ part: HTTPServerResponsePart, flush: Bool)
    /// An upstream's HTTP/1 response head with the proxy's edits (forwardsHTTP1Heads only).
    func writeForwarded(_ received: HTTP1ResponseHead, _ rewrite: HeadRewrite, status: HTTPResponseStatus, minorVersion: Int)
    /// The client is written HTTP/2 response blocks from the block an upstream stream sent
    /// (writeForwarded(block:)).
    var forwardsHTTP2Blocks: Bool { get }
    /// An upstream's HTTP/2 response block with the proxy's edits (forwardsHTTP2Blocks only).
    func writeForwarded(_ block: HPACKHeaders, _ rewrite: HeadRewrite)
    func flush()
    /// Ends the client's connection (HTTP/1) or stream (HTTP/2) before its time.
    func closeClient()
    /// Ends an HTTP/1 client's connection after a whole response that does not keep it.
    func closeAfterResponse()
    /// Stops or resumes taking the request body.
    func pauseReads(_ p: Bool)
    func setStreamIdleDeadline(_ d: NIODeadline?)
    func setRequestDeadline(_ d: NIODeadline?)
    func exchangeFinished(_ ex: ProxyExchange)
}

extension ExchangeClient {
    func write(_ part: HTTPServerResponsePart) { write(part, flush: false) }
}

/// The upstream end of one exchange's attempt: a pooled HTTP/1.1 connection
/// (UpstreamHTTP1Handler) or one stream of a pooled HTTP/2 connection
/// (HTTP2UpstreamStream). It reports to its delegate.
protocol ExchangeUpstream: AnyObject {
    var delegate: ExchangeUpstreamDelegate? { get set }
    /// The endpoint as telemetry writes it (formatted once per connection).
    var endpointText: String { get }
    /// Requests sent on the connection (maxRequestsPerConnection).
    var requests: Int { get set }
    /// One HTTP/2 stream: it is sent NIO heads, and ends with its exchange.
    var isStream: Bool { get }
    /// The upstream did not process the request (refused stream, or past a GOAWAY).
    var refused: Bool { get }
    /// The pooled HTTP/1.1 connection this is; nil for an HTTP/2 stream (the pool and the
    /// WebSocket switch tell them apart without a dynamic cast).
    var connection: UpstreamHTTP1Handler? { get }
    /// Let go after an exchange completed with it (a stream still open resets itself; a
    /// connection is pooled by UpstreamPool.release).
    func released()
    func setPaused(_ p: Bool)
    func send(_ part: HTTPClientRequestPart, flush: Bool)
    /// A request head as the client's HTTP/1 connection received it, with the proxy's
    /// edits (HTTP/1 connections only).
    func sendForwarded(_ received: HTTP1RequestHead, _ rewrite: HeadRewrite, method: HTTPMethod)
    /// A request head as the client's HTTP/2 stream received it (the header block), with
    /// the proxy's edits (HTTP/2 streams only).
    func sendForwarded(_ block: HPACKHeaders, _ rewrite: HeadRewrite, method: HTTPMethod)
    func flush()
    func close()
}

extension ExchangeUpstream {
    func send(_ part: HTTPClientRequestPart) { send(part, flush: false) }
}

/// NIO's HTTP/1-shaped heads to HTTP/2 header blocks and back, for the streams the proxy
/// serves and opens at the frame level (RFC 9113 §8.3): pseudo-fields first, names in
/// lower case, no connection-specific field.
enum HTTP2Heads {
    /// A field that must not appear in HTTP/2 (RFC 9113 §8.2.2), `te` but for `trailers`.
    static func isConnectionSpecific(_ name: String, _ value: String) -> Bool {
        guard ProxyExchange.isHopByHop(name) else { return false }
        var name = name, value = value
        let te = name.withUTF8 { HTTP1RequestHead.equalsLowercased(UnsafeRawBufferPointer($0), "te") }
        return !(te && value.withUTF8 { HTTP1RequestHead.equalsLowercased(UnsafeRawBufferPointer($0), "trailers") })
    }

    /// `name` in lower case (the same String when it already is: no copy).
    static func lowercased(_ name: String) -> String {
        name.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) ? name.lowercased() : name
    }

    /// A response head as HEADERS: `:status`, then its fields.
    static func response(_ head: HTTPResponseHead) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(head.headers.count + 1)
        out.add(name: ":status", value: statusText(head.status.code))
        appendRegular(head.headers, to: &out)
        return out
    }

    /// Trailers as a HEADERS block.
    static func trailers(_ headers: HTTPHeaders) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(headers.count)
        appendRegular(headers, to: &out)
        return out
    }

    /// A request head as HEADERS: `:method`, `:scheme`, `:authority` (its Host), `:path`,
    /// then its other fields. CONNECT (RFC 9113 §8.5) has no scheme or path. Nil if a
    /// field could not be sent (RFC 9113 §8.2.1, §8.3.1): upstream connections do not have
    /// NIO validate what they send, so this is where a value with CR, LF or NUL (a route's
    /// header value) or a target with a space stops.
    static func request(_ head: HTTPRequestHead, scheme: String = "http") -> HPACKHeaders? {
        var out = HPACKHeaders()
        out.reserveCapacity(head.headers.count + 3)
        guard isPseudoValue(head.method.rawValue) else { return nil }
        out.add(name: ":method", value: head.method.rawValue)
        let connect = head.method == .CONNECT
        if !connect { out.add(name: ":scheme", value: scheme) }
        if let host = head.headers.first(name: "host") {
            guard isPseudoValue(host) else { return nil }
            out.add(name: ":authority", value: host)
        }
        if !connect {
            guard !head.uri.isEmpty, isPseudoValue(head.uri) else { return nil }
            out.add(name: ":path", value: head.uri)
        }
        for (name, value) in head.headers where !isConnectionSpecific(name, value) {
            let lower = lowercased(name)
            if lower == "host" { continue }
            guard isFieldName(lower), isFieldValue(value) else { return nil }
            out.add(name: lower, value: value, indexing: indexing(lower))
        }
        return out
    }

    /// Whether an upstream's response header block (or, `trailers`, its trailer block)
    /// is one an HTTP/2 peer may send (RFC 9113 §8.2, §8.3.2): `:status` of three digits,
    /// first and the only pseudo-field (none in trailers), names lower-case tokens, values
    /// without NUL, CR or LF, no connection-specific field. Upstream connections check
    /// this themselves rather than have NIO validate every block both ways (~40k
    /// instructions per request, callgrind); a client's blocks NIO still validates.
    static func isValidResponse(_ block: HPACKHeaders, trailers: Bool) -> Bool {
        var first = true
        for (name, value, _) in block {
            if name.utf8.first == UInt8(ascii: ":") {
                guard !trailers, first, name == ":status", value.utf8.count == 3,
                      value.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return false }
            } else {
                guard !(first && !trailers), isFieldName(name), isFieldValue(value) else { return false }
                switch name.utf8.count {
                case 7, 10, 16, 17: // the connection-specific names, by length first
                    if name == "upgrade" || name == "connection" || name == "keep-alive" || name == "proxy-connection"
                        || name == "transfer-encoding" { return false }
                default:
                    break
                }
            }
            first = false
        }
        return !first || trailers
    }

    /// Whether a request header block is one an HTTP/2 client may send (RFC 9113 §8.2,
    /// §8.3.1), as NIO's validation judges it, for connections whose blocks NIO does not
    /// check (a tunnel requests connection): pseudo-fields first, none but :method,
    /// :scheme, :authority and :path, each at most once, their values free of control
    /// bytes, space and DEL; :method, :scheme and a non-empty :path present — or, for
    /// CONNECT, :method and :authority only; names lower-case tokens, values free of NUL,
    /// CR and LF; no connection-specific field, and `te` only as `trailers`.
    static func isValidRequest(_ block: HPACKHeaders) -> Bool {
        let method: UInt8 = 1, scheme: UInt8 = 2, authority: UInt8 = 4, path: UInt8 = 8
        var seen: UInt8 = 0, regular = false, connect = false
        for (name, value, _) in block {
            if name.utf8.first == UInt8(ascii: ":") {
                guard !regular, isPseudoValue(value) else { return false }
                let bit: UInt8
                switch name {
                case ":method":
                    bit = method
                    connect = value == "CONNECT"
                case ":scheme": bit = scheme
                case ":authority": bit = authority
                case ":path":
                    guard !value.isEmpty else { return false }
                    bit = path
                default: return false
                }
                guard seen & bit == 0 else { return false }
                seen |= bit
            } else {
                regular = true
                guard isFieldName(name), isFieldValue(value) else { return false }
                switch name.utf8.count {
                case 2:
                    if name == "te" && value != "trailers" { return false }
                case 7, 10, 16, 17: // the connection-specific names, by length first
                    if name == "upgrade" || name == "connection" || name == "keep-alive" || name == "proxy-connection"
                        || name == "transfer-encoding" { return false }
                default:
                    break
                }
            }
        }
        return connect ? seen == method | authority : seen & (method | scheme | path) == method | scheme | path
    }

    /// A request an HTTP/2 client sent (its header block as NIO validated it) as it goes
    /// to an HTTP/2 upstream: the pseudo-fields made anew — the route's authority and
    /// target — and the received fields the rewrite keeps passed as they came, each with
    /// the client's own indexing choice (a field it sent never-indexed stays so), then the
    /// rewrite's additions, checked here since they did not come from the client. No
    /// NIO head in between (HTTP2Heads.request is the way for heads that were HTTP/1).
    static func forwardedRequest(_ block: HPACKHeaders, _ rewrite: HeadRewrite, method: String, scheme: String = "http") -> HPACKHeaders? {
        var out = HPACKHeaders()
        out.reserveCapacity(block.count + 4)
        out.add(name: ":method", value: method)
        let connect = method == "CONNECT"
        if !connect { out.add(name: ":scheme", value: scheme) }
        if let host = rewrite.first("host") {
            guard isPseudoValue(host) else { return nil }
            out.add(name: ":authority", value: host)
        }
        if !connect {
            guard !rewrite.target.isEmpty, isPseudoValue(rewrite.target) else { return nil }
            out.add(name: ":path", value: rewrite.target)
        }
        for (name, value, indexing) in block {
            // Pseudo-fields were made above; Host went into :authority.
            if name.utf8.first == UInt8(ascii: ":") || (name.utf8.count == 4 && name == "host") { continue }
            if rewrite.keeps(name, value) { out.add(name: name, value: value, indexing: indexing) }
        }
        var valid = true
        rewrite.forEachAdded { name, value in
            if name.utf8.count == 4 && name == "host" { return }
            guard isFieldName(name), isFieldValue(value) else {
                valid = false
                return
            }
            out.add(name: name, value: value, indexing: indexing(name))
        }
        return valid ? out : nil
    }

    /// A field name as HTTP/2 carries it: a token in lower case.
    static func isFieldName(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { p in
            guard !p.isEmpty else { return false }
            for b in p {
                // Lower-case letters, '-' and digits first: nearly every name is only those.
                if (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || b == UInt8(ascii: "-") { continue }
                if b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") { return false }
                if !HTTP1RequestHead.isTokenByte(b) { return false }
            }
            return true
        }
    }

    /// A field value with no NUL, CR or LF (RFC 9113 §8.2.1).
    static func isFieldValue(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { p in
            for b in p where b < 0x0e && (b == 0 || b == 0x0a || b == 0x0d) { return false }
            return true
        }
    }

    /// A pseudo-field value that will become part of a request line: no control byte,
    /// space or DEL.
    static func isPseudoValue(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { p in
            for b in p where b <= 0x20 || b == 0x7f { return false }
            return true
        }
    }

    /// How HPACK may index a field: not a value that is new in every message (a request
    /// id). Indexed, each would enter the encoder's dynamic table only to push out the
    /// fields that do repeat, and every later lookup would walk a full table of them
    /// (37k instructions per request in NIO's encoder, callgrind).
    static func indexing(_ lowercasedName: String) -> HPACKIndexing {
        // Values new with every request (ids): in the dynamic table they would only push
        // out the fields that repeat, and every later field would be compared with them
        // (a traceparent per request cost NIO's encoder ~25k instructions in that search).
        let unique: Bool
        switch lowercasedName.utf8.count {
        case 2: unique = lowercasedName == "b3"
        case 11: unique = lowercasedName == "traceparent" || lowercasedName == "x-b3-spanid"
        case 12: unique = lowercasedName == "x-request-id" || lowercasedName == "x-b3-traceid"
        case 17: unique = lowercasedName == "x-b3-parentspanid"
        default: unique = false
        }
        return unique ? .nonIndexable : .indexable
    }

    private static func appendRegular(_ headers: HTTPHeaders, to out: inout HPACKHeaders) {
        for (name, value) in headers where !isConnectionSpecific(name, value) {
            let lower = lowercased(name)
            out.add(name: lower, value: value, indexing: indexing(lower))
        }
    }

    /// The status code as text, without formatting the common ones.
    static func statusText(_ code: UInt) -> String {
        switch code {
        case 200: return "200"
        case 204: return "204"
        case 404: return "404"
        default: return String(code)
        }
    }

    /// A response an HTTP/2 upstream sent (its block as checked by isValidResponse) as it
    /// goes to an HTTP/2 client: `:status` and the received fields the rewrite keeps as
    /// they came, with their indexing, then the rewrite's additions (the client's
    /// connection has NIO check what it sends).
    static func forwardedResponse(_ block: HPACKHeaders, _ rewrite: HeadRewrite) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(block.count + 2)
        for (name, value, indexing) in block where name.utf8.first == UInt8(ascii: ":") || rewrite.keeps(name, value) {
            out.add(name: name, value: value, indexing: indexing)
        }
        rewrite.forEachAdded { out.add(name: $0, value: $1, indexing: indexing($0)) }
        return out
    }

    /// The regular fields of an HTTP/2 header block as NIO headers (pseudo-fields left out).
    static func regular(_ block: HPACKHeaders) -> HTTPHeaders {
        var fields: [(String, String)] = []
        fields.reserveCapacity(block.count)
        for (name, value, _) in block where !name.hasPrefix(":") { fields.append((name, value)) }
        return HTTPHeaders(fields)
    }
}
