import CWeftABI
import WeftConfig

// Conversions between weft_abi.h structs (imported by Swift with tuples for byte arrays)
// and the dataplane's value types. Ports are network byte order in every struct.

func addrTuple(_ ip: IPAddress) -> (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) {
    let b = ip.bytes
    return (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15])
}

func addrBytes<T>(_ tuple: T) -> [UInt8] { withUnsafeBytes(of: tuple) { Array($0) } }

extension weft_svc_key {
    init(_ fe: Frontend) {
        self.init(addr: addrTuple(fe.address), port: fe.port.bigEndian, proto: fe.proto.rawValue, family: fe.address.family)
    }

    var frontend: Frontend? {
        guard let p = L4Protocol(rawValue: proto) else { return nil }
        return Frontend(address: IPAddress(family: family, bytes: addrBytes(addr)), port: UInt16(bigEndian: port), proto: p)
    }
}

extension weft_svc_val {
    init(_ s: ActualState.Service) {
        self.init(table_off: s.tableOff, table_size: s.tableSize, backend_count: s.backendCount, algo: s.algo, flags: s.flags,
                  svc_id: s.svcID, fingerprint: s.fingerprint)
    }

    var service: ActualState.Service {
        .init(svcID: svc_id, tableOff: table_off, tableSize: table_size, backendCount: backend_count, algo: algo, fingerprint: fingerprint, flags: flags)
    }
}

extension weft_backend_val {
    init(_ a: BackendAddress, weight: UInt32, draining: Bool) {
        self.init(addr: addrTuple(a.address), port: a.port.bigEndian, family: a.address.family,
                  state: UInt8(draining ? WEFT_BACKEND_DRAINING.rawValue : WEFT_BACKEND_ACTIVE.rawValue), weight: weight)
    }

    var backend: ActualState.Backend {
        .init(address: BackendAddress(address: IPAddress(family: family, bytes: addrBytes(addr)), port: UInt16(bigEndian: port)),
              weight: weight, draining: UInt32(state) == WEFT_BACKEND_DRAINING.rawValue)
    }
}

extension weft_wl_val {
    init(_ ip: IPAddress) {
        self.init(addr: addrTuple(ip), family: ip.family, pad: (0, 0, 0))
    }

    var address: IPAddress { IPAddress(family: family, bytes: addrBytes(addr)) }
}

extension weft_revnat_key {
    var text: String {
        let a = IPAddress(family: family, bytes: addrBytes(addr))
        return "cookie \(cookie) → \(a.withPort(UInt16(bigEndian: port)))"
    }
}

extension weft_revnat_val {
    var text: String { IPAddress(family: family, bytes: addrBytes(addr)).withPort(UInt16(bigEndian: port)) }
}

/// Names of the per-CPU counters, indexed by enum weft_stat.
public let statNames: [String] = [
    "connect_xlate", "connect_no_backend", "sendmsg_xlate", "sendmsg_no_backend",
    "recvmsg_revnat", "peername_revnat", "revnat_full",
    "connect_capture", "capture_rekeyed", "capture_full", "agent_bypass", "dns_redirect", "egress_refused",
]

extension weft_capture_key {
    init(_ client: BackendAddress) {
        self.init(addr: addrTuple(client.address), port: client.port.bigEndian, family: client.address.family, pad: 0)
    }

    var client: BackendAddress {
        BackendAddress(address: IPAddress(family: family, bytes: addrBytes(addr)), port: UInt16(bigEndian: port))
    }
}

extension weft_capture_val {
    var origin: CapturedOrigin {
        CapturedOrigin(destination: BackendAddress(address: IPAddress(family: family, bytes: addrBytes(addr)), port: UInt16(bigEndian: port)),
                       cgroupID: cgroup_id)
    }
}
