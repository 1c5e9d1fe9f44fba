import CLibbpf
import Glibc

/// Start-up probes for what the datapath needs, each failing with one actionable line.
public enum KernelFeatures {
    static let cgroup2Magic: Int = 0x6367_7270
    static let bpffsMagic: Int = 0xcafe_4a11

    /// The mount point of the cgroup v2 hierarchy, read from /proc/mounts (it is not
    /// always /sys/fs/cgroup: hybrid systems mount it at /sys/fs/cgroup/unified).
    public static func cgroup2Mount() -> String? {
        guard let text = try? readFile("/proc/mounts") else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count >= 3 && f[2] == "cgroup2" { return String(f[1]) }
        }
        return nil
    }

    /// This process's cgroup v2 directory (from /proc/self/cgroup, under the hierarchy's
    /// mount point) and its id: what the kernel sees as the agent's own cgroup.
    public static func ownCgroup() throws -> (path: String, id: UInt64) {
        guard let mount = cgroup2Mount() else { throw BPFError("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)") }
        let text = try readFile("/proc/self/cgroup")
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else {
            throw BPFError("/proc/self/cgroup names no cgroup v2 directory for this process")
        }
        let relative = String(line.dropFirst(3))
        let path = relative == "/" ? mount : mount + relative
        var st = stat()
        if stat(path, &st) != 0 { throw BPFError.errno("this process's cgroup \(path)") }
        return (path, UInt64(st.st_ino))
    }

    /// Fails unless `path` is a directory on a cgroup v2 filesystem.
    public static func requireCgroup2(_ path: String) throws {
        var fs = statfs()
        if statfs(path, &fs) != 0 {
            throw BPFError.errno("cgroup \(path) is not accessible (--cgroup)")
        }
        if Int(fs.f_type) != cgroup2Magic {
            let hint = cgroup2Mount().map { "the cgroup v2 hierarchy is mounted at \($0)" }
                ?? "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)"
            throw BPFError("cgroup \(path) is not on cgroup v2 (--cgroup): weft needs cgroup v2; \(hint)")
        }
    }

    /// Whether `path` is on a bpf filesystem.
    public static func isOnBPFFS(_ path: String) -> Bool {
        var fs = statfs()
        return statfs(path, &fs) == 0 && Int(fs.f_type) == bpffsMagic
    }

    /// Makes `dir` a directory on bpffs, mounting bpffs at /sys/fs/bpf if `dir` lies below
    /// it and nothing is mounted there yet.
    public static func ensureBPFFS(_ dir: String) throws {
        var existing = dir
        while access(existing, F_OK) != 0, existing != "/" {
            existing = parent(of: existing)
        }
        if !isOnBPFFS(existing) {
            if dir.hasPrefix("/sys/fs/bpf/") || dir == "/sys/fs/bpf" {
                mkdir("/sys/fs/bpf", 0o755)
                if mount("bpf", "/sys/fs/bpf", "bpf", 0, nil) != 0 {
                    throw BPFError.errno("bpffs is not mounted and mounting it at /sys/fs/bpf failed")
                }
            } else {
                throw BPFError("\(dir) is not on a bpf filesystem (--bpffs): mount one with `mount -t bpf bpf <dir>` or use a path under /sys/fs/bpf")
            }
        }
        try makeDirectories(dir)
    }

    /// mkdir -p.
    public static func makeDirectories(_ path: String) throws {
        var cur = ""
        for comp in path.split(separator: "/") {
            cur += "/" + comp
            if mkdir(cur, 0o700) != 0 && errno != EEXIST {
                throw BPFError.errno("creating directory \(cur)")
            }
        }
    }

    static func parent(of path: String) -> String {
        let comps = path.split(separator: "/").dropLast()
        return "/" + comps.joined(separator: "/")
    }

    /// Reads a whole (small, procfs-like) file.
    public static func readFile(_ path: String) throws -> String {
        guard let f = fopen(path, "r") else { throw BPFError.errno("reading \(path)") }
        defer { fclose(f) }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
