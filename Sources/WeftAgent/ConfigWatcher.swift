/// WeftAgent: the composition root — starts the datapath, watches config, reconciles,
/// serves the admin socket, and shuts everything down (or leaves it running) on signal.
import Glibc

/// Watches a directory with inotify and reports "something changed" events.
///
/// Editors and `kubectl`-style tools write a temp file and rename it, so creates, moves,
/// deletes and completed writes all count; the agent debounces and re-reads everything.
final class ConfigWatcher: @unchecked Sendable {
    private let fd: Int32
    private var stopped = false

    init(directory: String) throws {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        if fd < 0 { throw AgentError("inotify_init1 failed: \(String(cString: strerror(errno)))") }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF)
        if inotify_add_watch(fd, directory, mask) < 0 {
            let e = errno
            close(fd)
            throw AgentError("cannot watch config dir \(directory) (--config-dir): \(String(cString: strerror(e)))")
        }
    }

    /// Changes as an async stream; the reading thread polls so it can stop promptly.
    func events() -> AsyncStream<Void> {
        let (stream, cont) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let thread = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 64 * 1024)
            while !stopped {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 250) > 0 {
                    let n = read(fd, &buf, buf.count)
                    if n > 0 { cont.yield(()) }
                }
            }
            close(fd)
            cont.finish()
        }
        thread.start()
        return stream
    }

    func stop() { stopped = true }
}

/// A thread for blocking work that must not occupy the cooperative pool.
final class Thread: @unchecked Sendable {
    private let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let t = Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue()
            t.body()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
    }
}

/// An agent failure, shown as one line.
public struct AgentError: Error, CustomStringConvertible {
    /// The message.
    public let description: String
    init(_ d: String) { description = d }
}
