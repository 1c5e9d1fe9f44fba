import CLibbpf
import Glibc

/// A BPF ELF object opened from memory with libbpf, before and after load.
public final class BPFObject: @unchecked Sendable {
    /// libbpf's `struct bpf_object *`.
    let handle: OpaquePointer
    /// libbpf reads the ELF image in place until the object is closed, so we own the copy.
    private let image: UnsafeMutableRawBufferPointer
    /// The object's name (e.g. "sock.bpf.o"), for messages.
    public let name: String

    /// Opens an object from its bytes (not yet loaded into the kernel).
    public init(name: String, bytes: [UInt8]) throws {
        self.name = name
        image = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        _ = image.initializeMemory(as: UInt8.self, from: bytes)
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size
        let objName = strdup(name)
        defer { free(objName) }
        opts.object_name = UnsafePointer(objName)
        guard let obj = bpf_object__open_mem(image.baseAddress, image.count, &opts) else {
            let e = errno
            image.deallocate()
            throw BPFError.errno("opening BPF object \(name)", e)
        }
        handle = obj
    }

    deinit {
        bpf_object__close(handle)
        image.deallocate()
    }

    /// Names of the object's maps (including internal ones such as .rodata).
    public var mapNames: [String] {
        var out: [String] = []
        var m = bpf_object__next_map(handle, nil)
        while let map = m {
            out.append(String(cString: bpf_map__name(map)))
            m = bpf_object__next_map(handle, map)
        }
        return out
    }

    /// Names of the object's programs (the C function names).
    public var programNames: [String] {
        var out: [String] = []
        var p = bpf_object__next_program(handle, nil)
        while let prog = p {
            out.append(String(cString: bpf_program__name(prog)))
            p = bpf_object__next_program(handle, prog)
        }
        return out
    }

    private func rawMap(_ name: String) throws -> OpaquePointer {
        guard let m = bpf_object__find_map_by_name(handle, name) else {
            throw BPFError("BPF object \(self.name) has no map \(name)")
        }
        return m
    }

    func rawProgram(_ name: String) throws -> OpaquePointer {
        guard let p = bpf_object__find_program_by_name(handle, name) else {
            throw BPFError("BPF object \(self.name) has no program \(name)")
        }
        return p
    }

    /// Before load: pin the map at `path`, reusing a compatible map already pinned there
    /// (this is how a restarted agent adopts the maps of the previous one).
    public func setPinPath(map: String, path: String) throws {
        let rc = bpf_map__set_pin_path(try rawMap(map), path)
        if rc != 0 { throw BPFError.errno("setting pin path of map \(map)", rc) }
    }

    /// Before load: the capacity of a map.
    public func setMaxEntries(map: String, _ n: UInt32) throws {
        let rc = bpf_map__set_max_entries(try rawMap(map), n)
        if rc != 0 { throw BPFError.errno("sizing map \(map) to \(n) entries", rc) }
    }

    /// Before load: writes `bytes` into the `const volatile` global `variable` (in the
    /// object's .rodata), found through BTF so other constants may share the section.
    public func setGlobal(_ variable: String, bytes: [UInt8]) throws {
        guard let btf else { throw BPFError("BPF object \(name) has no BTF: cannot set \(variable)") }
        let secID = btf__find_by_name_kind(btf, ".rodata", 15 /* BTF_KIND_DATASEC: the macro and the enum collide in Swift */)
        guard secID > 0, let sec = btf__type_by_id(btf, UInt32(secID)) else {
            throw BPFError("BPF object \(name) has no .rodata section: no global \(variable)")
        }
        var place: (offset: Int, size: Int)?
        let infos = btf_var_secinfos(sec)!
        for i in 0..<Int(btf_vlen(sec)) {
            let info = infos[i]
            if let v = btf__type_by_id(btf, info.type), let n = btf__name_by_offset(btf, v.pointee.name_off),
               String(cString: n) == variable {
                place = (Int(info.offset), Int(info.size))
            }
        }
        guard let place else { throw BPFError("BPF object \(name) has no global \(variable)") }
        guard place.size == bytes.count else {
            throw BPFError("global \(variable) of \(name) is \(place.size) bytes, not \(bytes.count) (weft_abi.h and the build disagree)")
        }
        let map = try rawMap(".rodata")
        var size = 0
        guard let initial = bpf_map__initial_value(map, &size), place.offset + place.size <= size else {
            throw BPFError("BPF object \(name): .rodata is not writable before load")
        }
        var data = [UInt8](UnsafeRawBufferPointer(start: initial, count: size))
        data.replaceSubrange(place.offset..<(place.offset + place.size), with: bytes)
        let rc = data.withUnsafeBytes { bpf_map__set_initial_value(map, $0.baseAddress, size) }
        if rc != 0 { throw BPFError.errno("setting \(variable) of \(name)", rc) }
    }

    /// Loads every program and creates (or reuses) every map; the verifier runs here.
    public func load() throws {
        let rc = bpf_object__load(handle)
        if rc != 0 {
            throw BPFError.errno("loading BPF object \(name) (libbpf printed the details above)", rc)
        }
    }

    /// A loaded map of this object; the fd stays owned by the object.
    public func map(_ name: String) throws -> BPFMap {
        let fd = bpf_map__fd(try rawMap(name))
        if fd < 0 { throw BPFError("map \(name) of \(self.name) is not loaded") }
        return try BPFMap(fd: fd, owned: false)
    }

    /// The object's BTF (type information the compiler emitted), if any.
    public var btf: OpaquePointer? { bpf_object__btf(handle) }
}
