import Foundation
import Glibc
import Logging

/// Taking over from a running agent without dropping a connection: the old agent passes
/// its listening sockets (SCM_RIGHTS over the admin socket), the new one serves on them,
/// says "ready", and the old one (which stopped accepting when it passed them) drains and
/// exits, leaving the datapath to the new one (which adopts it as after any restart).
public struct Handover: Sendable {
    /// The connection to the old agent, kept until the new one is ready.
    let connection: CInt
    /// Its listening sockets, by "HOST PORT" (ProxyRuntime.listenerKey).
    let sockets: [String: CInt]

    /// The line the new agent sends when it serves.
    static let ready = "ready\n"

    /// Asks the agent at `adminSocket` for its listening sockets; nil if none answers
    /// (then there is nothing to take over: a fresh start), an error if `required`.
    static func fetch(adminSocket: String, required: Bool, logger: Logger) throws -> Handover? {
        let fd: CInt
        switch try AdminClient.connect(adminSocket) {
        case .success(let f): fd = f
        case .failure(let e):
            if required { throw AgentError("--takeover: no agent answers at \(adminSocket) (\(e))") }
            return nil
        }
        logger.info("takeover: an agent answers at \(adminSocket); asking for its listening sockets", metadata: ["component": "handover"])
        do {
            try AdminClient.write(AdminRequest(op: .handover), to: fd, halfClose: false)
        } catch {
            close(fd)
            throw AgentError("takeover: \(error) (--admin-socket \(adminSocket))")
        }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // The answer line, then (in one message of its own) the descriptors. Read a byte at
        // a time: a larger read could take the descriptors' message and lose them.
        var line = [UInt8]()
        var byte: UInt8 = 0
        while line.count < 1 << 16 {
            guard read(fd, &byte, 1) == 1 else { break }
            if byte == 0x0a { break }
            line.append(byte)
        }
        guard let answer = try? JSONDecoder().decode(AdminResponse.self, from: Data(line)) else {
            close(fd)
            throw AgentError("takeover: the agent at \(adminSocket) did not answer the handover (\(String(decoding: line, as: UTF8.self)))")
        }
        guard answer.ok, let keys = answer.handover else {
            close(fd)
            throw AgentError("takeover: the agent at \(adminSocket) refused: \(answer.error ?? "no sockets named")")
        }
        let fds = try receive(count: keys.count, from: fd)
        logger.info("takeover: received \(fds.count) listening socket(s) from the running agent: \(keys.joined(separator: ", "))",
                    metadata: ["component": "handover"])
        return Handover(connection: fd, sockets: Dictionary(uniqueKeysWithValues: zip(keys, fds)))
    }

    /// Tells the old agent this one serves: it stops accepting and drains.
    func confirm(logger: Logger) {
        let ok = Handover.ready.withCString { Glibc.send(connection, $0, strlen($0), Int32(MSG_NOSIGNAL)) } == Handover.ready.utf8.count
        logger.info(ok ? "takeover: serving; the old agent stops accepting and drains" : "takeover: could not tell the old agent (it is gone?)",
                    metadata: ["component": "handover"])
        close(connection)
    }

    // MARK: SCM_RIGHTS

    /// Room for `n` descriptors in a control message (CMSG_SPACE; Swift has no macros).
    private static func controlSpace(_ n: Int) -> Int {
        let align = MemoryLayout<Int>.size
        let header = (MemoryLayout<cmsghdr>.size + align - 1) & ~(align - 1)
        return header + ((n * MemoryLayout<CInt>.size + align - 1) & ~(align - 1))
    }

    static func pass(fds: [CInt], over sock: CInt) throws {
        var control = [UInt8](repeating: 0, count: controlSpace(fds.count))
        var payload: UInt8 = 0x2a // one byte: a message carries its descriptors
        let sent = control.withUnsafeMutableBytes { ctl -> Int in
            let header = ctl.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
            header.pointee.cmsg_len = MemoryLayout<cmsghdr>.size + fds.count * MemoryLayout<CInt>.size
            header.pointee.cmsg_level = SOL_SOCKET
            header.pointee.cmsg_type = Int32(SCM_RIGHTS)
            fds.withUnsafeBytes { ctl.baseAddress!.advanced(by: MemoryLayout<cmsghdr>.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return withUnsafeMutablePointer(to: &payload) { p in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(p), iov_len: 1)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: iovp, msg_iovlen: 1, msg_control: ctl.baseAddress,
                                     msg_controllen: ctl.count, msg_flags: 0)
                    return sendmsg(sock, &msg, Int32(MSG_NOSIGNAL))
                }
            }
        }
        if sent != 1 { throw AgentError("handover: passing the listening sockets failed: \(String(cString: strerror(errno)))") }
    }

    static func receive(count: Int, from sock: CInt) throws -> [CInt] {
        var control = [UInt8](repeating: 0, count: controlSpace(count))
        var payload: UInt8 = 0
        let (n, fds) = control.withUnsafeMutableBytes { ctl -> (Int, [CInt]) in
            let n = withUnsafeMutablePointer(to: &payload) { p -> Int in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(p), iov_len: 1)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: iovp, msg_iovlen: 1, msg_control: ctl.baseAddress,
                                     msg_controllen: ctl.count, msg_flags: 0)
                    return recvmsg(sock, &msg, Int32(MSG_CMSG_CLOEXEC))
                }
            }
            guard n == 1 else { return (n, []) }
            let header = ctl.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
            guard header.pointee.cmsg_level == SOL_SOCKET, header.pointee.cmsg_type == Int32(SCM_RIGHTS) else { return (n, []) }
            let got = (header.pointee.cmsg_len - MemoryLayout<cmsghdr>.size) / MemoryLayout<CInt>.size
            let base = ctl.baseAddress!.advanced(by: MemoryLayout<cmsghdr>.size)
            return (n, (0..<got).map { base.loadUnaligned(fromByteOffset: $0 * MemoryLayout<CInt>.size, as: CInt.self) })
        }
        guard n == 1, fds.count == count else {
            for fd in fds { close(fd) }
            throw AgentError("handover: expected \(count) listening socket(s) from the running agent, got \(fds.count)")
        }
        return fds
    }
}

extension Agent {
    /// The old agent's side: a new agent asked for the listening sockets on admin
    /// connection `fd`. Stops writing the maps and accepting (the sockets stay open: what
    /// comes meanwhile waits in the kernel's queue for the new agent), passes the sockets,
    /// and waits for the new agent's "ready"; then closes them, drains its connections
    /// (ProxyRuntime.startDraining) for at most --drain-timeout, and shuts down, leaving
    /// the datapath and the admin socket's path to the new agent. If the new agent goes
    /// away before it is ready, this one carries on as before.
    func handOver(_ fd: CInt) {
        Thread { [self] in
            defer { close(fd) }
            guard let proxy = lock.withLock({ self.proxy }), !handingOver.exchange(true, ordering: .relaxed) else {
                AdminServer.sendLine(fd, .failure("this agent has no proxy to hand over, or is handing over already"))
                return
            }
            let sockets = proxy.handoverSockets()
            logger.info("handover: a new agent asks for the listening sockets; passing \(sockets.count): \(sockets.map(\.key).joined(separator: ", "))",
                        metadata: ["component": "handover"])
            var answer = AdminResponse(ok: true)
            answer.handover = sockets.map(\.key)
            proxy.setAccepting(false)
            do {
                guard AdminServer.sendLine(fd, answer) else { throw AgentError("the new agent went away") }
                try Handover.pass(fds: sockets.map(\.fd), over: fd)
            } catch {
                logger.warning("handover: aborted (\(error)); carrying on", metadata: ["component": "handover"])
                proxy.setAccepting(true)
                handingOver.store(false, ordering: .relaxed)
                return
            }
            // Wait for "ready" (the new agent adopts the datapath and programs its config
            // first); no timeout of ours: the new agent's failure closes the connection.
            var tv = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var buf = [UInt8](repeating: 0, count: Handover.ready.utf8.count)
            let n = read(fd, &buf, buf.count)
            guard n == buf.count, String(decoding: buf, as: UTF8.self) == Handover.ready else {
                logger.warning("handover: the new agent went away before it was ready; carrying on", metadata: ["component": "handover"])
                proxy.setAccepting(true)
                handingOver.store(false, ordering: .relaxed)
                return
            }
            handedOver.store(true, ordering: .relaxed)
            proxy.startDraining()
            let open = proxy.openConnections
            logger.info("handover: the new agent serves; this one accepts no more connections and drains \(open) (at most \(Int(options.drainTimeout)) s)",
                        metadata: ["component": "handover"])
            let deadline = Date().addingTimeInterval(options.drainTimeout)
            while proxy.openConnections > 0 && Date() < deadline { usleep(100_000) }
            logger.info("handover: drained (\(proxy.openConnections) connection(s) left); exiting", metadata: ["component": "handover"])
            kill(getpid(), SIGTERM) // the usual graceful shutdown, minus the datapath's removal
        }.start()
    }
}

extension Agent {
    /// SIGHUP (the unit's ExecReload: `systemctl reload weft`) upgrades in place: the
    /// agent starts the weft binary now at the path it was started from, with its own
    /// arguments and --takeover; that one takes over as any new agent does and tells
    /// systemd it is the service's main process. A restart stops the agent before the next
    /// one starts, failing what it carried; this fails nothing.
    func serveUpgrades() {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler { [self] in upgrade() }
        source.resume()
        lock.withLock { upgradeSignal = source }
    }

    private func upgrade() {
        guard !handingOver.load(ordering: .relaxed) else {
            logger.warning("upgrade: this agent is handing over already; SIGHUP ignored", metadata: ["component": "handover"])
            return
        }
        var args = Array(CommandLine.arguments.dropFirst())
        if !args.contains("--takeover") { args.append("--takeover") }
        let argv = ([executable] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        // The new agent starts with default signal handling and nothing blocked: this
        // thread (libdispatch's) blocks signals, and ignored ones would stay ignored.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid = pid_t()
        let rc = posix_spawn(&pid, executable, nil, &attr, argv, environ)
        guard rc == 0 else {
            logger.error("upgrade: cannot start \(executable): \(String(cString: strerror(rc))); this agent carries on", metadata: ["component": "handover"])
            return
        }
        logger.info("upgrade: started \(executable) (pid \(pid)) to take over from this agent (pid \(getpid()))", metadata: ["component": "handover"])
        Thread { [self, logger] in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            if !handedOver.load(ordering: .relaxed) {
                logger.error("upgrade: the new agent (pid \(pid)) exited (wait status \(status)) before it took over; this agent carries on",
                             metadata: ["component": "handover"])
            }
        }.start()
    }
}
