import CLibbpf
import Glibc

/// A consumer of a BPF ring buffer map (libbpf's ring_buffer): `poll` hands each record
/// the kernel committed to `handle`, in order, on the calling thread.
public final class BPFRingBuffer {
    private final class Sink {
        let handle: (UnsafeRawBufferPointer) -> Void
        init(_ handle: @escaping (UnsafeRawBufferPointer) -> Void) { self.handle = handle }
    }

    private let rb: OpaquePointer
    private let sink: Sink

    /// Attaches to `map` (a BPF_MAP_TYPE_RINGBUF). Only one consumer should read a ring
    /// buffer: consumers share its read position and would take each other's records.
    public init(map: BPFMap, handle: @escaping (UnsafeRawBufferPointer) -> Void) throws {
        guard map.type == BPF_MAP_TYPE_RINGBUF.rawValue else {
            throw BPFError("map \(map.name) is not a ring buffer (type \(map.type))")
        }
        sink = Sink(handle)
        let ctx = Unmanaged.passUnretained(sink).toOpaque()
        guard let rb = ring_buffer__new(map.fd, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            Unmanaged<Sink>.fromOpaque(ctx).takeUnretainedValue().handle(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }, ctx, nil) else {
            throw BPFError.errno("reading ring buffer \(map.name)")
        }
        self.rb = rb
    }

    deinit { ring_buffer__free(rb) }

    /// Consumes whatever is committed, without waiting; returns how many.
    @discardableResult
    public func consume() throws -> Int {
        let n = ring_buffer__consume(rb)
        if n < 0 { throw BPFError.errno("reading ring buffer", n) }
        return Int(n)
    }

    /// Waits up to `timeoutMs` for records and consumes what is there; returns how many.
    @discardableResult
    public func poll(timeoutMs: Int32) throws -> Int {
        let n = ring_buffer__poll(rb, timeoutMs)
        if n < 0 && n != -EINTR { throw BPFError.errno("polling ring buffer", n) }
        return max(0, Int(n))
    }
}
