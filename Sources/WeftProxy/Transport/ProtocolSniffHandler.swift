import NIOCore

/// What a captured connection speaks, judged from its first bytes.
enum SniffedProtocol: Equatable {
    case http1
    case http2
    case opaque
    /// The client closed its side without sending a byte (a TCP health check's connect
    /// and close, wrk's last connection at its exit).
    case silent
}

/// Reads just enough of a connection to tell HTTP/1.1 (a request line), HTTP/2 (the
/// connection preface) and anything else apart, then hands the buffered bytes to the
/// handlers `decided` installs and leaves the pipeline. On an HTTP port "anything else"
/// is authorized as plain TCP at the destination (Istio's rule for TCP: an ALLOW rule
/// with HTTP fields matches nothing, a DENY rule with them denies all).
final class ProtocolSniffHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// The longest method token weft accepts before deciding it is not HTTP/1.
    static let maxMethod = 20

    private var buffered: ByteBuffer?
    private let decided: (SniffedProtocol, ChannelHandlerContext) -> Void
    private var done = false
    private let firstBytesTimeout: TimeAmount
    private let restTimeout: TimeAmount
    private var timer: Scheduled<Void>?

    /// `decided` runs once, on the event loop, with this handler still in the pipeline:
    /// it adds the protocol's handlers after this one; the buffered bytes follow. A client
    /// that sends nothing for `firstBytesTimeout`, or starts and stalls for `restTimeout`,
    /// is closed.
    init(firstBytesTimeout: TimeAmount = .hours(1), restTimeout: TimeAmount = .seconds(10),
         decided: @escaping (SniffedProtocol, ChannelHandlerContext) -> Void) {
        self.decided = decided
        self.firstBytesTimeout = firstBytesTimeout
        self.restTimeout = restTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(context, firstBytesTimeout) }
    func handlerRemoved(context: ChannelHandlerContext) { timer?.cancel() }

    private func arm(_ context: ChannelHandlerContext, _ after: TimeAmount) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: after) { [weak self] in
            if self?.done == false { context.close(promise: nil) }
        }
    }

    /// The protocol the bytes so far prove, or nil if more are needed. HTTP/1 is a request
    /// line's start — a method token of any RFC 9110 tchar, upper case or not, then SP —
    /// after the empty lines RFC 9112 §2.2 lets a server skip: a request that servers read
    /// as HTTP must be read as HTTP here too, and NIO's strict parser is what refuses an
    /// unknown method, not a guess that hands the bytes on unparsed.
    static func classify(_ bytes: ByteBufferView) -> SniffedProtocol? {
        let n = min(bytes.count, preface.count)
        if bytes.prefix(n).elementsEqual(preface.prefix(n)) {
            return n == preface.count ? .http2 : nil
        }
        var i = bytes.startIndex
        var emptyLineBytes = 0
        while i < bytes.endIndex, bytes[i] == UInt8(ascii: "\r") || bytes[i] == UInt8(ascii: "\n") {
            emptyLineBytes += 1
            if emptyLineBytes > maxLeadingEmptyLineBytes { return .opaque }
            i = bytes.index(after: i)
        }
        var length = 0
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: " ") { return length > 0 ? .http1 : .opaque }
            if !isTokenChar(b) || length >= maxMethod { return .opaque }
            length += 1
            i = bytes.index(after: i)
        }
        return nil
    }

    /// Empty lines weft skips before a request line, in bytes (CR and LF each count).
    static let maxLeadingEmptyLineBytes = 16

    /// RFC 9110 §5.6.2 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~.
    static func isTokenChar(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if done {
            context.fireChannelRead(data)
            return
        }
        if buffered == nil {
            buffered = incoming
            arm(context, restTimeout)
        } else {
            buffered!.writeBuffer(&incoming)
        }
        guard let proto = Self.classify(buffered!.readableBytesView) else { return }
        finish(context, proto)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A client that half-closes before saying anything recognisable is opaque TCP
        // (or silent: nothing at all); the handlers chosen see its half-close.
        if !done, let e = event as? ChannelEvent, e == .inputClosed {
            finish(context, (buffered?.readableBytes ?? 0) > 0 ? .opaque : .silent, then: event)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Hands over to what `decided` installs: the buffered bytes, then `event` (the
    /// half-close that decided it) — both before this handler leaves, since a removed
    /// handler's context passes nothing on.
    private func finish(_ context: ChannelHandlerContext, _ proto: SniffedProtocol, then event: Any? = nil) {
        done = true
        timer?.cancel()
        decided(proto, context)
        if let b = buffered, b.readableBytes > 0 {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(b))
            context.fireChannelReadComplete()
        }
        if let event { context.fireUserInboundEventTriggered(event) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
