import NIOCore
import NIOHTTP2

/// Last in an HTTP/2 connection's pipeline: sees what failed it (a TLS handshake error,
/// an HTTP/2 connection error after NIO sent its GOAWAY), reports it once and closes the
/// connection. Without it the error falls off the pipeline and the connection stays
/// open, its streams waiting for frames that will never come.
///
/// A single stream's error (a bad header, a length mismatch) reaches this pipeline too,
/// after NIO has reset just that stream: that one must not take the connection's other
/// streams down.
final class CloseOnError: ChannelInboundHandler {
    typealias InboundIn = Any
    private let failed: (Error) -> Void
    private var reported = false

    init(_ failed: @escaping (Error) -> Void) {
        self.failed = failed
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard Self.endsHTTP2Connection(error) else { return }
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
