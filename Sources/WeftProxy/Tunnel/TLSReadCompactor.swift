import NIOCore

/// Between NIOSSL's handler and NIO's HTTP/2 handler on tunnel connections: hands NIO's
/// HTTP/2 frame decoder reads of at most 16 KiB, none in a storage larger than that.
///
/// The decoder keeps what it has not parsed yet (a partial frame) in a buffer that grows
/// to fit what it is handed and never shrinks, and hands out the frames it parses as
/// slices of that buffer; appending the next read while such a slice is still alive
/// copies the whole buffer. After an iperf3 run through the tunnel, NIOSSL's reads of
/// megabytes had grown agent b's decoder buffer to 64 MiB, and every later read — a
/// request of 918 bytes — copied all 64 MiB into a fresh allocation: agent b spent 84 %
/// of its CPU in that copy and its page faults, and a TCP port's new connections fell
/// from ~4,500/s to 140–900/s for the rest of the tunnel's life (`scripts/bench mtls`;
/// perf, and the decoder's buffer sizes logged). Fed 16 KiB at a time, the decoder's
/// buffer stays within tens of kilobytes, and so does any copy of it. Bytes in a
/// storage that NIOSSL grew are copied out (their own bytes only), so no large storage
/// reaches the decoder by adoption either.
final class TLSReadCompactor: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// One TLS record's worth, HTTP/2's default frame size.
    static let piece = 16 * 1024

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        if b.storageCapacity <= Self.piece * 2 && b.readableBytes <= Self.piece {
            context.fireChannelRead(data)
            return
        }
        while let slice = b.readSlice(length: min(Self.piece, b.readableBytes)), slice.readableBytes > 0 {
            var copy = context.channel.allocator.buffer(capacity: slice.readableBytes)
            copy.writeImmutableBuffer(slice)
            context.fireChannelRead(wrapInboundOut(copy))
        }
    }
}
