import NIOCore
import NIOHPACK
import NIOHTTP2
import WeftConfig

/// Bytes over one HTTP/2 stream: the inside of a CONNECT tunnel (RFC 9113 §8.5). Above it
/// the stream looks like a TCP connection: ByteBuffers in and out, the peer's END_STREAM
/// arrives as `inputClosed`, and `close(mode: .output)` sends END_STREAM (a half-close,
/// where NIO's stream channel would otherwise reset the stream).
///
/// On the client side it first waits for the response to the CONNECT request: `opened`
/// succeeds on a 2xx and fails on anything else.
final class TunnelStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var opened: EventLoopPromise<Void>?
    private var outputEnded = false
    private var inputEnded = false

    /// `opened`: nil on the server side, where the stream is open when this is added.
    init(opened: EventLoopPromise<Void>? = nil) {
        self.opened = opened
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let h):
            if let p = opened {
                opened = nil
                let status = h.headers.first(name: ":status") ?? "none"
                guard status.count == 3, status.hasPrefix("2") else {
                    p.fail(ProxyError("the tunnel peer refused CONNECT: status \(status)"))
                    context.close(promise: nil)
                    return
                }
                p.succeed(())
            }
            if h.endStream { endInput(context) }
        case .data(let d):
            guard opened == nil else {
                // DATA before the response: a broken peer.
                context.close(promise: nil)
                return
            }
            if case .byteBuffer(let b) = d.data, b.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(b)) }
            if d.endStream { endInput(context) }
        case .rstStream:
            context.close(promise: nil)
        default:
            break
        }
    }

    private func endInput(_ context: ChannelHandlerContext) {
        guard !inputEnded else { return }
        inputEnded = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    func channelInactive(context: ChannelHandlerContext) {
        opened?.fail(TunnelStreamLost(description: "the tunnel stream closed before CONNECT was answered"))
        opened = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        opened?.fail(error)
        opened = nil
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        // An empty write carries nothing, and as a DATA frame it would cost the tunnel:
        // NIO's HTTP/2 flood guard (CVE-2019-9518) fails a connection after two empty DATA
        // frames with no HEADERS or END_STREAM between them, counted across all its
        // streams — and an inner HTTP/2 connection writes an empty payload for every
        // zero-length frame it sends (e.g. END_STREAM after a body).
        guard bytes.readableBytes > 0 else {
            promise?.succeed(())
            return
        }
        let payload = HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(bytes)))
        context.write(wrapOutboundOut(payload), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        guard !outputEnded else {
            promise?.succeed(())
            return
        }
        outputEnded = true
        let end = HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))
        context.writeAndFlush(wrapOutboundOut(end), promise: promise)
    }
}

extension TunnelStreamHandler {
    /// Writes a frame on a tunnel stream below the byte adapter (which carries only DATA):
    /// the CONNECT request and its response.
    static func send(_ ch: Channel, _ payload: HTTP2Frame.FramePayload) {
        if let ctx = try? ch.pipeline.syncOperations.context(handlerType: TunnelStreamHandler.self) {
            ctx.writeAndFlush(NIOAny(payload), promise: nil)
        }
    }
}

/// The CONNECT request of a tunnel stream (RFC 9113 §8.5: :method and :authority only).
/// `forwardedFor` is the original client's address, for the destination's policy and
/// telemetry (RFC 7239 Forwarded); the destination believes it only from an
/// authenticated peer agent.
func connectRequest(target: SocketKey, forwardedFor: IPAddress?) -> HPACKHeaders {
    var h = HPACKHeaders([(":method", "CONNECT"), (":authority", target.description)])
    if let f = forwardedFor { h.add(name: "forwarded", value: f.family == 6 ? "for=\"[\(f)]\"" : "for=\"\(f)\"") }
    return h
}

/// A CONNECT stream that ended before its answer, or never opened: its connection was
/// going away (a GOAWAY on its way, refusing new streams; closed). Nothing reached the
/// target, so a new connection may be tried.
struct TunnelStreamLost: Error, CustomStringConvertible {
    let description: String
}
