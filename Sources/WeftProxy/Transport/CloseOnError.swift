import NIOCore
import NIOHTTP2

/// Last in an HTTP/2 connection's pipeline: sees what failed it (a TLS handshake error,
/// an HTTP/2 connection error after NIO sent its GOAWAY), reports it once and closes the
/// connection. Without it the error falls off the pipeline and the connection stays
/// open, its streams waiting for frames that will never come.
///
/// A single stream's error (a bad header, a length mismatch) reaches this pipeline too,
/// after NIO has reset just that stream: that one must not take the connection's other
/// streams down; nor must an error NIO raises for a frame the proxy wrote (a window
/// update for a stream that just closed), which NIO drops and goes on. What tells a
/// connection error NIO found in what the peer sent is NIO's GOAWAY with an error code,
/// seen here as the connection's frame delegate: after it NIO refuses every frame and
/// expects the connection closed. (Left open, an upstream connection took requests whose
/// answers NIO then read one frame per socket read: requests hung.)
final class CloseOnError: ChannelInboundHandler, NIOHTTP2FrameDelegate {
    typealias InboundIn = Any
    private let failed: (Error) -> Void
    private var reported = false
    /// NIO sent GOAWAY with an error code: it gave the connection up.
    private var gaveUp = false

    /// How many of the streams it reset a connection NIO's handler remembers, to ignore
    /// what the peer still sends on them (RFC 9113 §5.1); a frame on an older one fails
    /// the connection. NIO's default, 32, is far too few for the connections the proxy
    /// opens: each client's cancelled request resets a stream on them, and a burst of
    /// cancellations (a Rapid Reset flood, hundreds at once) meets the answers already on
    /// the way. 4 KiB per connection. Client-facing connections keep it to their limit of
    /// concurrent streams (`clientResets`).
    static let rememberedResets = 1024
    static let clientResets = 128

    init(_ failed: @escaping (Error) -> Void) {
        self.failed = failed
    }

    func wroteFrame(_ frame: HTTP2Frame) {
        if case .goAway(_, let code, _) = frame.payload, code != .noError { gaveUp = true }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard gaveUp || Self.endsHTTP2Connection(error) else { return }
        if !reported {
            reported = true
            failed(error)
        }
        context.close(promise: nil)
    }

    /// Errors after which an HTTP/2 connection is done: not from HTTP/2 at all (TLS,
    /// I/O), or one of NIO's flood and abuse guards, which answer with GOAWAY and drop
    /// every stream. Any other HTTP/2 error is one stream's, or leaves the streams
    /// running.
    static func endsHTTP2Connection(_ error: Error) -> Bool {
        // NIO reset that stream (a handler in frame mode reports its streams' errors here).
        if error is NIOHTTP2Errors.StreamError { return false }
        guard error is any NIOHTTP2Error else { return true }
        switch error {
        case is NIOHTTP2Errors.ExcessiveEmptyDataFrames, is NIOHTTP2Errors.ExcessiveRSTFrames,
             is NIOHTTP2Errors.ExcessiveControlFrames, is NIOHTTP2Errors.ExcessiveContinuationFrames,
             is NIOHTTP2Errors.ExcessiveStreamErrors, is NIOHTTP2Errors.ExcessiveNumberOfGlitches,
             is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering:
            return true
        default:
            return false
        }
    }
}
