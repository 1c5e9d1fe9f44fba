import CLibbpf
import Glibc

/// An open BPF map file descriptor with its geometry; byte-level and typed access.
///
/// Values of per-CPU maps are one slot per possible CPU, each rounded up to 8 bytes, as
/// the kernel lays them out; `lookupPerCPU` hands them back split.
public final class BPFMap: @unchecked Sendable {
    /// The file descriptor; owned unless the map belongs to a `BPFObject`.
    public let fd: Int32
    /// The map's kernel name (at most 15 characters).
    public let name: String
    /// The kernel map type (BPF_MAP_TYPE_*).
    public let type: UInt32
    /// Key size in bytes.
    public let keySize: Int
    /// Value size in bytes (one CPU's slot for per-CPU maps).
    public let valueSize: Int
    /// Capacity.
    public let maxEntries: UInt32
    /// Kernel map id.
    public let id: UInt32
    /// Map flags (BPF_F_*).
    public let flags: UInt32
    private let owned: Bool

    /// Wraps an fd, reading its geometry from the kernel.
    public init(fd: Int32, owned: Bool) throws {
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        let rc = bpf_obj_get_info_by_fd(fd, &info, &len)
        if rc != 0 {
            if owned { close(fd) }
            throw BPFError.errno("reading map info", rc)
        }
        self.fd = fd
        self.owned = owned
        self.type = info.type
        self.keySize = Int(info.key_size)
        self.valueSize = Int(info.value_size)
        self.maxEntries = info.max_entries
        self.id = info.id
        self.flags = info.map_flags
        self.name = withUnsafeBytes(of: info.name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Opens a map pinned at `path`.
    public convenience init(pinnedAt path: String) throws {
        let fd = bpf_obj_get(path)
        if fd < 0 { throw BPFError.errno("opening pinned map \(path)") }
        try self.init(fd: fd, owned: true)
    }

    /// Opens a map by kernel id (e.g. an inner map found through its outer map).
    public convenience init(id: UInt32) throws {
        let fd = bpf_map_get_fd_by_id(id)
        if fd < 0 { throw BPFError.errno("opening map id \(id)") }
        try self.init(fd: fd, owned: true)
    }

    /// Creates a new map (used for the inner tables of map-in-map).
    public static func create(type: bpf_map_type, name: String, keySize: Int, valueSize: Int,
                              maxEntries: UInt32, flags: UInt32 = 0) throws -> BPFMap {
        var opts = bpf_map_create_opts()
        opts.sz = MemoryLayout<bpf_map_create_opts>.size
        opts.map_flags = flags
        let fd = bpf_map_create(type, name, UInt32(keySize), UInt32(valueSize), maxEntries, &opts)
        if fd < 0 { throw BPFError.errno("creating map \(name) (\(maxEntries) entries)", fd) }
        return try BPFMap(fd: fd, owned: true)
    }

    deinit { if owned { close(fd) } }

    /// Whether values are stored once per CPU.
    public var isPerCPU: Bool {
        [BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH]
            .map { $0.rawValue }.contains(type)
    }

    /// Bytes a lookup returns: valueSize, or one 8-byte-aligned slot per possible CPU.
    public var lookupSize: Int {
        isPerCPU ? ((valueSize + 7) & ~7) * Int(Self.possibleCPUs) : valueSize
    }

    /// Number of possible CPUs, as per-CPU maps are sized.
    public static let possibleCPUs: Int32 = max(libbpf_num_possible_cpus(), 1)

    // MARK: bytes

    /// Looks up raw key bytes; nil if absent.
    public func lookup(keyBytes key: [UInt8]) throws -> [UInt8]? {
        try read(key, "looking up in map", bpf_map_lookup_elem)
    }

    /// Inserts or replaces raw bytes (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST).
    public func update(keyBytes key: [UInt8], valueBytes value: [UInt8], flags: UInt64 = UInt64(BPF_ANY)) throws {
        precondition(key.count == keySize && value.count == lookupSize, "\(name): wrong key/value size")
        let rc = key.withUnsafeBytes { k in
            value.withUnsafeBytes { v in bpf_map_update_elem(fd, k.baseAddress, v.baseAddress, flags) }
        }
        if rc != 0 { throw BPFError.errno("updating map \(name)") }
    }

    /// Looks up and removes a key in one syscall; nil if absent. Kernels before 5.14 take
    /// only from queues and stacks this way (ENOTSUPP): there it is a lookup and a delete.
    public func lookupAndDelete(keyBytes key: [UInt8]) throws -> [UInt8]? {
        do {
            return try read(key, "taking an entry from map", bpf_map_lookup_and_delete_elem)
        } catch let e as BPFError where e.code == Self.enotsupp {
            guard let value = try lookup(keyBytes: key) else { return nil }
            try delete(keyBytes: key)
            return value
        }
    }

    /// The kernel's ENOTSUPP (not in libc's errno.h).
    static let enotsupp: Int32 = 524

    /// A value-reading syscall (lookup, lookup-and-delete) on raw key bytes.
    private func read(_ key: [UInt8], _ what: String,
                      _ call: (Int32, UnsafeRawPointer?, UnsafeMutableRawPointer?) -> Int32) throws -> [UInt8]? {
        precondition(key.count == keySize, "\(name): key is \(key.count) bytes, map wants \(keySize)")
        var value = [UInt8](repeating: 0, count: lookupSize)
        let rc = key.withUnsafeBytes { k in
            value.withUnsafeMutableBytes { v in call(fd, k.baseAddress, v.baseAddress) }
        }
        if rc == 0 { return value }
        if errno == ENOENT { return nil }
        throw BPFError.errno("\(what) \(name)")
    }

    /// Deletes a key; returns false if it was not there.
    @discardableResult
    public func delete(keyBytes key: [UInt8]) throws -> Bool {
        let rc = key.withUnsafeBytes { k in bpf_map_delete_elem(fd, k.baseAddress) }
        if rc == 0 { return true }
        if errno == ENOENT { return false }
        throw BPFError.errno("deleting from map \(name)")
    }

    /// All keys, by walking get_next_key. A concurrent delete can make the walk restart
    /// from the beginning (kernel semantics), so keys are de-duplicated.
    public func keys() throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        var seen = Set<[UInt8]>()
        var cur: [UInt8]? = nil
        var next = [UInt8](repeating: 0, count: keySize)
        while true {
            let rc: Int32
            if let c = cur {
                rc = c.withUnsafeBytes { k in next.withUnsafeMutableBytes { n in bpf_map_get_next_key(fd, k.baseAddress, n.baseAddress) } }
            } else {
                rc = next.withUnsafeMutableBytes { n in bpf_map_get_next_key(fd, nil, n.baseAddress) }
            }
            if rc != 0 {
                if errno == ENOENT { break }
                throw BPFError.errno("listing keys of map \(name)")
            }
            if seen.insert(next).inserted { out.append(next) } else if out.count > Int(maxEntries) { break }
            cur = next
            if out.count > Int(maxEntries) { break }
        }
        return out
    }

    /// Every (key, value) pair, raw.
    public func entries() throws -> [(key: [UInt8], value: [UInt8])] {
        try keys().compactMap { k in try lookup(keyBytes: k).map { (k, $0) } }
    }

    // MARK: typed (POD structs imported from weft_abi.h, or integers)

    /// Looks up a typed key; nil if absent.
    public func lookup<K, V>(_ key: K, as: V.Type = V.self) throws -> V? {
        precondition(MemoryLayout<V>.size == lookupSize, "\(name): value type size mismatch")
        guard let bytes = try lookup(keyBytes: Self.bytes(of: key)) else { return nil }
        return Self.value(V.self, from: bytes)
    }

    /// Inserts or replaces a typed entry.
    public func update<K, V>(_ key: K, _ value: V, flags: UInt64 = UInt64(BPF_ANY)) throws {
        try update(keyBytes: Self.bytes(of: key), valueBytes: Self.bytes(of: value), flags: flags)
    }

    /// Deletes a typed key; returns false if it was not there.
    @discardableResult
    public func delete<K>(_ key: K) throws -> Bool { try delete(keyBytes: Self.bytes(of: key)) }

    /// Every entry, typed.
    public func entries<K, V>(_: K.Type, _: V.Type) throws -> [(key: K, value: V)] {
        try entries().map { (Self.value(K.self, from: $0.key), Self.value(V.self, from: $0.value)) }
    }

    /// Per-CPU values of one key, each decoded as V.
    public func lookupPerCPU<K, V>(_ key: K, as: V.Type) throws -> [V] {
        guard let bytes = try lookup(keyBytes: Self.bytes(of: key)) else { return [] }
        let stride = (valueSize + 7) & ~7
        return (0..<Int(Self.possibleCPUs)).map { cpu in
            Self.value(V.self, from: Array(bytes[(cpu * stride)..<(cpu * stride + MemoryLayout<V>.size)]))
        }
    }

    /// Writes `values` to an array map at keys offset..<offset+count, in one batch syscall.
    public func fillArray(_ values: [UInt32], offset: UInt32 = 0) throws {
        precondition(keySize == 4 && valueSize == 4)
        if values.isEmpty { return }
        var keys = (0..<UInt32(values.count)).map { $0 + offset }
        var vals = values
        var count = UInt32(values.count)
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        let rc = bpf_map_update_batch(fd, &keys, &vals, &count, &opts)
        if rc != 0 { throw BPFError.errno("writing \(values.count) slots at \(offset) of map \(name)", rc) }
    }

    /// Reads keys offset..<offset+count of a u32 array map, in batches.
    public func readArray(offset: UInt32, count: UInt32) throws -> [UInt32] {
        precondition(keySize == 4 && valueSize == 4)
        var out = [UInt32]()
        out.reserveCapacity(Int(count))
        var next = offset
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        while UInt32(out.count) < count {
            // A batch lookup resumes after the key in in_batch: start just before `next`.
            var inBatch = next &- 1
            var outBatch: UInt32 = 0
            var n = min(count - UInt32(out.count), 65536)
            var keys = [UInt32](repeating: 0, count: Int(n))
            var vals = [UInt32](repeating: 0, count: Int(n))
            let rc = withUnsafeMutablePointer(to: &inBatch) { inPtr in
                bpf_map_lookup_batch(fd, next == 0 ? nil : UnsafeMutableRawPointer(inPtr), &outBatch, &keys, &vals, &n, &opts)
            }
            if rc != 0 && rc != -ENOENT { throw BPFError.errno("reading \(count) slots at \(offset) of map \(name)", rc) }
            if n == 0 { break }
            out += vals.prefix(Int(n))
            next += n
        }
        return out
    }

    /// The raw bytes of a POD value.
    public static func bytes<T>(of value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }

    /// A POD value from raw bytes (zero-padded if short).
    public static func value<T>(_: T.Type, from bytes: [UInt8]) -> T {
        var buf = [UInt8](repeating: 0, count: max(MemoryLayout<T>.size, bytes.count))
        buf.replaceSubrange(0..<bytes.count, with: bytes)
        return buf.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }
}
