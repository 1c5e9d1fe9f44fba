import NIOCore
import NIOHTTP2

/// Flow control of one HTTP/2 stream the proxy carries at the frame level, both ways
/// (RFC 9113 §5.2), so that what one side sends is held only as long as the other side
/// takes it:
///
/// - receiving: what the peer sent is given back (WINDOW_UPDATE) once it has been handed
///   on and reads are not held back (the other side cannot take more), in batches of half
///   the window — so at most one window per stream waits in the proxy;
/// - sending: bytes written and not yet out of NIO's buffers (their write not completed:
///   the peer's window or the socket holds them) are counted, and past `highWater` the
///   stream reads as not writable, which holds the other side's credit back in turn.
struct HTTP2StreamFlow {
    /// Received and not yet given back.
    private var owed = 0
    /// Reads are held back: nothing is given back.
    private(set) var paused = false
    /// Written, not yet gone out.
    private(set) var unsent = 0
    /// Give back once this much is owed: half of the 65,535-byte window both ends of the
    /// proxy's HTTP/2 connections use.
    static let batch = 32 * 1024
    static let highWater = 64 * 1024
    static let lowWater = 16 * 1024

    /// Whether more may be written now: false from `highWater` unsent bytes until they
    /// are down to `lowWater`.
    private(set) var writable = true

    /// `n` bytes came in and were handed on: how much to give back now (0: nothing yet).
    mutating func received(_ n: Int) -> Int {
        owed += n
        return paused || owed < Self.batch ? 0 : takeOwed()
    }

    /// Holds reads back or lets them go: how much to give back now.
    mutating func setPaused(_ p: Bool) -> Int {
        paused = p
        return !p && owed > 0 ? takeOwed() : 0
    }

    private mutating func takeOwed() -> Int {
        defer { owed = 0 }
        return owed
    }

    /// `n` bytes written: whether the stream stopped being writable.
    mutating func wrote(_ n: Int) -> Bool {
        unsent += n
        guard writable && unsent >= Self.highWater else { return false }
        writable = false
        return true
    }

    /// `n` written bytes went out: whether the stream became writable again.
    mutating func sent(_ n: Int) -> Bool {
        unsent -= n
        guard !writable && unsent < Self.lowWater else { return false }
        writable = true
        return true
    }

    /// The flow-controlled length of a DATA frame: its data and padding (RFC 9113 §6.1).
    static func length(_ d: HTTP2Frame.FramePayload.Data) -> Int {
        d.data.readableBytes + (d.paddingBytes.map { $0 + 1 } ?? 0)
    }
}

/// The connection-level receive window of a frame-level HTTP/2 connection: given back as
/// data arrives (the stream windows bound what is held), in batches.
struct HTTP2ConnectionCredit {
    private var owed = 0

    /// `n` bytes arrived: how much to give back on stream 0 now.
    mutating func received(_ n: Int) -> Int {
        owed += n
        guard owed >= HTTP2StreamFlow.batch else { return 0 }
        defer { owed = 0 }
        return owed
    }
}

/// A frame-level HTTP/2 connection's place in its loop's FlushBatch.
struct FlushMembership {
    let batch: FlushBatch
    /// In its own read burst (the batch is open for it).
    var reading = false
    /// Waiting in the batch for a flush.
    var queued = false
}

/// A frame-level HTTP/2 connection of the proxy's (HTTP2ServerSession, HTTP2ClientSession),
/// whose writes can wait for a flush at the end of the loop's read burst.
protocol BatchFlushed: AnyObject {
    var flushing: FlushMembership { get set }
    var context: ChannelHandlerContext? { get }
}

extension BatchFlushed {
    /// Writes are to go out: now, or at the end of the read burst in progress on the loop.
    func flush() {
        if flushing.batch.open {
            if !flushing.queued {
                flushing.queued = true
                flushing.batch.add(self)
            }
        } else {
            flushNow()
        }
    }

    func flushNow() {
        flushing.queued = false
        context?.flush()
    }

    /// A channelRead: the first of a burst opens the batch.
    func readBurstStarts() {
        guard !flushing.reading else { return }
        flushing.reading = true
        flushing.batch.begin()
    }

    /// channelReadComplete, or the connection gone: the burst ends (and with the last
    /// open one, the batch's flushes happen).
    func readBurstEnds() {
        guard flushing.reading else { return }
        flushing.reading = false
        flushing.batch.end()
    }
}

/// The frame-level HTTP/2 connections of one event loop (client and upstream ones) that
/// were written to while one of them handles a read burst: each is flushed once when the
/// burst ends — one write system call for all the streams answered or opened in it, not
/// one per stream. A burst runs from a connection's first channelRead to its
/// channelReadComplete; nothing else runs on the loop in between.
final class FlushBatch {
    private var depth = 0
    private var pending: [BatchFlushed] = []
    /// The list being flushed, kept for its storage: swapped with `pending` rather than
    /// copied out of it (a copy and a fresh buffer per burst).
    private var flushing: [BatchFlushed] = []

    /// Whether a flush asked for now waits for the end of a burst.
    var open: Bool { depth > 0 }

    func begin() { depth += 1 }

    func end() {
        depth -= 1
        guard depth == 0, !pending.isEmpty else { return }
        // Flushing can start another connection's writes (a flush completes a write whose
        // callback writes more): those are flushed in a later round, not lost.
        while !pending.isEmpty {
            swap(&pending, &flushing)
            for c in flushing { c.flushNow() }
            flushing.removeAll(keepingCapacity: true)
        }
    }

    /// `connection` wants a flush at the end of the burst (it asks once per burst).
    func add(_ connection: BatchFlushed) {
        pending.append(connection)
    }
}
