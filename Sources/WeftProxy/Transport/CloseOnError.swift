import NIOCore

/// Last in a connection's pipeline: sees what failed it (a TLS handshake error, an HTTP/2
/// connection error after NIO sent its GOAWAY), reports it once and closes the
/// connection. Without it the error falls off the pipeline and the connection stays
/// open, its streams waiting for frames that will never come.
final class CloseOnError: ChannelInboundHandler {
    typealias InboundIn = Any
    private let failed: (Error) -> Void
    private var reported = false

    init(_ failed: @escaping (Error) -> Void) {
        self.failed = failed
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !reported {
            reported = true
            failed(error)
        }
        context.close(promise: nil)
    }
}
