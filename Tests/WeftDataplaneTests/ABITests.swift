import CLibbpf
import CWeftABI
import Testing
@testable import WeftDataplane
import WeftBPF

/// The BPF compiler's view of every ABI struct (from the BTF it put in sock.bpf.o) must be
/// Swift's view of the same header: same size, same member offsets.
@Suite struct ABITests {
    static func off<T, V>(_ kp: KeyPath<T, V>) -> Int { MemoryLayout<T>.offset(of: kp)! }

    static let swiftLayouts: [String: (size: Int, members: [String: Int])] = [
        "weft_svc_key": (MemoryLayout<weft_svc_key>.size, ["addr": off(\weft_svc_key.addr), "port": off(\weft_svc_key.port), "proto": off(\weft_svc_key.proto), "family": off(\weft_svc_key.family)]),
        "weft_svc_val": (MemoryLayout<weft_svc_val>.size, ["table_off": off(\weft_svc_val.table_off), "table_size": off(\weft_svc_val.table_size), "backend_count": off(\weft_svc_val.backend_count), "algo": off(\weft_svc_val.algo), "flags": off(\weft_svc_val.flags), "svc_id": off(\weft_svc_val.svc_id), "fingerprint": off(\weft_svc_val.fingerprint)]),
        "weft_backend_val": (MemoryLayout<weft_backend_val>.size, ["addr": off(\weft_backend_val.addr), "port": off(\weft_backend_val.port), "family": off(\weft_backend_val.family), "state": off(\weft_backend_val.state), "weight": off(\weft_backend_val.weight)]),
        "weft_revnat_key": (MemoryLayout<weft_revnat_key>.size, ["cookie": off(\weft_revnat_key.cookie), "addr": off(\weft_revnat_key.addr), "port": off(\weft_revnat_key.port), "family": off(\weft_revnat_key.family), "pad": off(\weft_revnat_key.pad)]),
        "weft_revnat_val": (MemoryLayout<weft_revnat_val>.size, ["addr": off(\weft_revnat_val.addr), "port": off(\weft_revnat_val.port), "family": off(\weft_revnat_val.family), "pad": off(\weft_revnat_val.pad)]),
        "weft_wl_val": (MemoryLayout<weft_wl_val>.size, ["addr": off(\weft_wl_val.addr), "family": off(\weft_wl_val.family), "pad": off(\weft_wl_val.pad)]),
        "weft_capture_key": (MemoryLayout<weft_capture_key>.size, ["addr": off(\weft_capture_key.addr), "port": off(\weft_capture_key.port), "family": off(\weft_capture_key.family), "pad": off(\weft_capture_key.pad)]),
        "weft_capture_val": (MemoryLayout<weft_capture_val>.size, ["addr": off(\weft_capture_val.addr), "port": off(\weft_capture_val.port), "family": off(\weft_capture_val.family), "pad": off(\weft_capture_val.pad), "cgroup_id": off(\weft_capture_val.cgroup_id)]),
        "weft_settings": (MemoryLayout<weft_settings>.size, ["proxy_port": off(\weft_settings.proxy_port), "inbound_port": off(\weft_settings.inbound_port), "agent_mark": off(\weft_settings.agent_mark), "tunnel_port": off(\weft_settings.tunnel_port), "dns_port": off(\weft_settings.dns_port), "no_set_retval": off(\weft_settings.no_set_retval), "pad": off(\weft_settings.pad), "agent_cgroup": off(\weft_settings.agent_cgroup)]),
        "weft_inpol_key": (MemoryLayout<weft_inpol_key>.size, ["addr": off(\weft_inpol_key.addr), "port": off(\weft_inpol_key.port), "family": off(\weft_inpol_key.family), "pad": off(\weft_inpol_key.pad)]),
        "weft_inpol_val": (MemoryLayout<weft_inpol_val>.size, ["action": off(\weft_inpol_val.action), "flags": off(\weft_inpol_val.flags), "pad": off(\weft_inpol_val.pad)]),
        "weft_inctr_key": (MemoryLayout<weft_inctr_key>.size, ["addr": off(\weft_inctr_key.addr), "family": off(\weft_inctr_key.family), "reason": off(\weft_inctr_key.reason), "pad": off(\weft_inctr_key.pad)]),
        "weft_evctl_val": (MemoryLayout<weft_evctl_val>.size, ["until_ns": off(\weft_evctl_val.until_ns)]),
    ]

    @Test func swiftAndBPFAgreeOnEveryStruct() throws {
        let object = try Datapath.embeddedObject("sock.bpf.o")
        let btf = try #require(object.btf, "sock.bpf.o has no BTF")
        for (name, swift) in Self.swiftLayouts {
            let id = btf__find_by_name_kind(btf, name, UInt32(BTF_KIND_STRUCT))
            try #require(id > 0, "struct \(name) is not in the BPF object's BTF")
            let t = try #require(btf__type_by_id(btf, UInt32(id)))
            #expect(Int(t.pointee.size) == swift.size, "\(name): BPF size \(t.pointee.size), Swift size \(swift.size)")
            let vlen = Int(t.pointee.info & 0xffff)
            let members = UnsafeRawPointer(t.advanced(by: 1)).assumingMemoryBound(to: btf_member.self)
            var seen: [String: Int] = [:]
            for i in 0..<vlen {
                let m = members[i]
                let mname = String(cString: btf__name_by_offset(btf, m.name_off))
                // Without the kind_flag bit, `offset` is the member's bit offset.
                seen[mname] = Int(m.offset) / 8
            }
            #expect(seen == swift.members, "\(name): BPF offsets \(seen), Swift offsets \(swift.members)")
        }
    }

    @Test func everyProgramAndMapTheAgentExpectsIsInTheObject() throws {
        let object = try Datapath.embeddedObject("sock.bpf.o")
        for m in DatapathMaps.names { #expect(object.mapNames.contains(m), "map \(m) missing") }
        let progs = Set(object.programNames)
        #expect(progs == ["weft_connect4", "weft_connect6", "weft_sendmsg4", "weft_sendmsg6", "weft_recvmsg4", "weft_recvmsg6", "weft_peername4", "weft_peername6",
                          "weft_sockops", "weft_in_guard"])
        let tc = try Datapath.embeddedObject("tc.bpf.o")
        #expect(Set(tc.programNames) == ["weft_tc_eth", "weft_tc_l3"])
        for m in ["weft_inpol_v1", "weft_inctr_v1", "weft_inlisten_v1"] { #expect(tc.mapNames.contains(m), "tc.bpf.o lacks map \(m)") }
        #expect(progs.allSatisfy { $0.count <= 15 }, "program names must fit bpftool's 15 characters")
    }

    @Test func everyCounterHasANameAndFits() {
        #expect(statNames.count == Int(WEFT_STAT_MAX.rawValue))
        #expect(Int(WEFT_STAT_MAX.rawValue) <= Int(WEFT_STAT_SLOTS))
        #expect(inboundReasonNames.count == Int(WEFT_IN_REASONS.rawValue))
    }

    /// The agent sets the programs' load-time settings through BTF; the variable must be
    /// where BPFObject.setGlobal looks.
    @Test func settingsGlobalIsSettable() throws {
        let object = try Datapath.embeddedObject("sock.bpf.o")
        try object.setGlobal("weft_settings", bytes: BPFMap.bytes(of: weft_settings(proxy_port: 15001, inbound_port: 15006, agent_mark: 7, tunnel_port: 15008, dns_port: 15053, no_set_retval: 0, pad: (0, 0, 0), agent_cgroup: 1)))
        #expect(throws: BPFError.self) { try object.setGlobal("no_such_global", bytes: [0]) }
        #expect(throws: BPFError.self) { try object.setGlobal("weft_settings", bytes: [0, 1]) }
    }

    /// The build for kernels before 5.12 differs only in having no atomic that returns the
    /// old value: the same programs and maps, so an agent on either adopts the same pins.
    @Test func olderKernelsBuildDiffersOnlyInItsAtomics() throws {
        let full = try Datapath.embeddedObject("sock.bpf.o")
        let older = try Datapath.embeddedObject("sock.nofetch.bpf.o")
        #expect(full.programInfo.contains { $0.usesAtomicFetch })
        #expect(!older.programInfo.contains { $0.usesAtomicFetch })
        #expect(full.programNames == older.programNames)
        #expect(full.mapInfo.map(\.name) == older.mapInfo.map(\.name))
        #expect(full.programInfo.map(\.helpers) == older.programInfo.map(\.helpers))
    }
}
