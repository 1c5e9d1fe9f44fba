import CLibbpf
import CWeftABI
import Foundation
import Logging
import WeftBPF

/// The loaded, attached datapath: programs on the cgroup, maps and links pinned.
///
/// Pin layout under --bpffs: `maps/<map>` and `links/<program>`. A pinned link keeps its
/// program attached after the agent exits; a new agent loads fresh programs, reuses the
/// pinned maps (libbpf's pin-path reuse) and swaps each program into the existing link
/// with BPF_LINK_UPDATE, so L4 traffic never sees a moment without a program.
public final class Datapath: @unchecked Sendable {
    /// The maps, typed.
    public let maps: DatapathMaps
    /// Whether an existing pinned datapath was adopted (agent restart).
    public let adopted: Bool
    /// The cgroup v2 id the programs are attached to.
    public let cgroupID: UInt64
    /// This process's cgroup: the kernel takes sockets made there for the agent's.
    public let agentCgroup: (path: String, id: UInt64)
    /// Program names (the C functions of sock.bpf.c).
    public let programs: [String]
    let object: BPFObject
    private var links: [String: BPFLink] = [:]
    private let bpffs: String
    /// The TC ingress filters on the node's interfaces (--interfaces).
    public private(set) var filters: [BPFTCFilter] = []
    /// weft_inlisten_v1 of the TC programs: the only sockets they steer into (owned by
    /// the loaded tc object, kept for it).
    private var steeringTargets: BPFMap?
    private var tcObject: BPFObject?

    /// Where weft's TC filter sits on an interface's ingress: its own handle ("we"), and
    /// priority 1 so it judges before filters that would end classification with OK.
    static let tcHandle: UInt32 = 0x7765
    static let tcPriority: UInt32 = 1

    /// `DIR/maps/NAME`.
    public static func mapPin(_ bpffs: String, _ name: String) -> String { "\(bpffs)/maps/\(name)" }
    /// `DIR/links/NAME`.
    public static func linkPin(_ bpffs: String, _ name: String) -> String { "\(bpffs)/links/\(name)" }

    /// The embedded sock.bpf.o.
    static func embeddedObject(_ name: String) throws -> BPFObject {
        guard let b64 = EmbeddedBPFObjects.base64[name], let data = Data(base64Encoded: b64) else {
            throw BPFError("BPF object \(name) is not embedded in this binary (build problem)")
        }
        return try BPFObject(name: name, bytes: [UInt8](data))
    }

    /// Checks kernel features, loads the programs, and attaches them to `cgroup` — or
    /// adopts what a previous agent left pinned under `bpffs`.
    public init(bpffs: String, cgroup: String, slots: UInt32, settings: Settings = Settings(), interfaces: [String] = [], logger: Logger) throws {
        // What this kernel lacks is said first, one line per feature, rather than as the
        // verifier's or libbpf's first failure further on.
        let support = try KernelSupport.probe()
        let missing = support.blocking(interfaces: !interfaces.isEmpty)
        if !missing.isEmpty { throw BPFError(missing.map(\.missingLine).joined(separator: "\n")) }
        for f in support.degradations { logger.warning("\(f.missingLine)", metadata: ["component": "dataplane"]) }
        try KernelFeatures.requireCgroup2(cgroup)
        try KernelFeatures.ensureBPFFS(bpffs)
        try KernelFeatures.makeDirectories("\(bpffs)/maps")
        try KernelFeatures.makeDirectories("\(bpffs)/links")
        self.bpffs = bpffs
        cgroupID = try Self.cgroupID(cgroup)
        agentCgroup = try KernelFeatures.ownCgroup()
        var settings = settings
        settings.agentCgroup = agentCgroup.id
        settings.noSetRetval = support.lacks("helper bpf_set_retval")

        object = try Self.embeddedObject(support.lacks(KernelSupport.atomicFetch) ? "sock.nofetch.bpf.o" : "sock.bpf.o")
        for m in DatapathMaps.names + DatapathMaps.eventMaps { try object.setPinPath(map: m, path: Self.mapPin(bpffs, m)) }
        // A pinned slot array being adopted keeps its size (libbpf reuses a pinned map only
        // if it matches exactly); resizing needs a stop without --keep-datapath.
        var slotCount = slots
        if let pinned = try? BPFMap(pinnedAt: Self.mapPin(bpffs, "weft_slot_v1")), pinned.maxEntries != slots {
            logger.warning("adopting weft_slot_v1 with its \(pinned.maxEntries) slots, not --lb-slots \(slots); stop the agent without --keep-datapath to resize",
                           metadata: ["component": "dataplane"])
            slotCount = pinned.maxEntries
        }
        try object.setMaxEntries(map: "weft_slot_v1", slotCount)
        try object.setGlobal("weft_settings", bytes: settings.bytes)
        try object.load()
        maps = try DatapathMaps(lookup: object.map)
        programs = object.programNames

        let cgfd = open(cgroup, O_RDONLY | O_DIRECTORY)
        if cgfd < 0 { throw BPFError.errno("opening cgroup \(cgroup) (--cgroup)") }
        defer { close(cgfd) }
        var adopted = false
        var links: [String: BPFLink] = [:]
        var created: [BPFLink] = []
        do {
            for prog in programs {
                let pin = Self.linkPin(bpffs, prog)
                if let link = try BPFLink.openPinned(pin) {
                    let info = try PinnedProgramInfo(pin: pin)
                    guard info.cgroupID == cgroupID else {
                        throw BPFError("the datapath pinned at \(bpffs) is attached to cgroup id \(info.cgroupID), not \(cgroup) (--cgroup): stop that agent without --keep-datapath, or use another --bpffs")
                    }
                    try link.update(object: object, program: prog)
                    links[prog] = link
                    adopted = true
                } else {
                    let link = try BPFLink.attachCgroup(object: object, program: prog, cgroupFD: cgfd)
                    created.append(link)
                    try link.pin(pin)
                    links[prog] = link
                }
            }
        } catch {
            // Undo what this attempt attached, so a failed start leaves no program behind
            // (adopted links belong to the running datapath and stay).
            for link in created { try? link.unpin() }
            throw error
        }
        self.links = links
        self.adopted = adopted
        try attachTC(interfaces: interfaces, settings: settings, created: created)
        // Links of programs this build no longer has (an older agent's) must not linger.
        let pinned = (try? FileManager.default.contentsOfDirectory(atPath: "\(bpffs)/links")) ?? []
        for name in pinned where !programs.contains(name) {
            unlink(Self.linkPin(bpffs, name))
        }
    }

    /// Loads tc.bpf.o (sharing the inbound policy maps pinned by sock.bpf.o) and puts it
    /// on the ingress of each interface, replacing an earlier agent's filter in place. A
    /// failure undoes this start's cgroup links. (A filter on an interface that an earlier
    /// agent kept with --keep-datapath and this one does not list stays: finding it would
    /// mean querying every interface of the node. Stop without --keep-datapath first.)
    private func attachTC(interfaces: [String], settings: Settings, created: [BPFLink]) throws {
        do {
            if !interfaces.isEmpty {
                let tc = try Self.embeddedObject("tc.bpf.o")
                for m in ["weft_inpol_v1", "weft_inctr_v1"] + DatapathMaps.eventMaps { try tc.setPinPath(map: m, path: Self.mapPin(bpffs, m)) }
                try tc.setGlobal("weft_settings", bytes: settings.bytes)
                try tc.load()
                steeringTargets = try tc.map("weft_inlisten_v1")
                tcObject = tc
                for name in interfaces {
                    let program = try BPFTCFilter.isEthernet(name) ? "weft_tc_eth" : "weft_tc_l3"
                    filters.append(try BPFTCFilter.attachIngress(object: tc, program: program, interface: name,
                                                                 handle: Self.tcHandle, priority: Self.tcPriority))
                }
            }
        } catch {
            for f in filters { try? f.detach() }
            filters = []
            for link in created { try? link.unpin() }
            throw BPFError("\(error) (--interfaces)")
        }
    }

    /// Gives the TC programs the agent's inbound listeners (descriptors, IPv6 or not): the
    /// only sockets plaintext is steered into. Without them steering fails closed.
    public func steer(into listeners: [(v6: Bool, fd: CInt)]) throws {
        guard let map = steeringTargets else { return }
        for l in listeners {
            try map.update(UInt32(l.v6 ? 1 : 0), UInt64(l.fd))
        }
    }

    /// What the programs are told at load time.
    public struct Settings: Sendable {
        /// Outbound listener port on 127.0.0.1 and ::1; 0 turns capture off.
        public var proxyPort: UInt16
        /// SO_MARK on the agent's own sockets, which are never captured.
        public var agentMark: UInt32
        /// Plaintext inbound listener that TC steers to; 0 = none (policy ports refuse).
        public var inboundPort: UInt16
        /// mTLS tunnel port: never subject to inbound policy.
        public var tunnelPort: UInt16
        /// The agent's DNS server port on 127.0.0.1 and ::1, where workloads' DNS queries
        /// go; 0 leaves DNS alone.
        public var dnsPort: UInt16
        /// The agent's cgroup id (set by Datapath from this process's own).
        var agentCgroup: UInt64 = 0
        /// The kernel's connect hooks cannot set an errno (before 6.1): refusals are EPERM
        /// (set by Datapath from its probe).
        var noSetRetval = false

        /// Creates settings (defaults: capture off).
        public init(proxyPort: UInt16 = 0, agentMark: UInt32 = 0, inboundPort: UInt16 = 0, tunnelPort: UInt16 = 0, dnsPort: UInt16 = 0) {
            self.proxyPort = proxyPort
            self.agentMark = agentMark
            self.inboundPort = inboundPort
            self.tunnelPort = tunnelPort
            self.dnsPort = dnsPort
        }

        /// weft_settings as the programs read it.
        var bytes: [UInt8] {
            BPFMap.bytes(of: weft_settings(proxy_port: proxyPort.bigEndian, inbound_port: inboundPort.bigEndian, agent_mark: agentMark,
                                           tunnel_port: tunnelPort.bigEndian, dns_port: dnsPort.bigEndian, no_set_retval: noSetRetval ? 1 : 0, pad: (0, 0, 0),
                                           agent_cgroup: agentCgroup))
        }
    }

    /// The cgroup v2 id of a cgroup directory (its kernfs inode number).
    public static func cgroupID(_ path: String) throws -> UInt64 {
        var st = stat()
        if stat(path, &st) != 0 { throw BPFError.errno("cgroup \(path)") }
        return UInt64(st.st_ino)
    }

    /// Detaches every program and removes every pin: the datapath is gone.
    public func remove() {
        for f in filters { try? f.detach() }
        filters = []
        for (_, link) in links { try? link.unpin() }
        links.removeAll() // closing the last fd of an unpinned link detaches it
        for m in DatapathMaps.names + DatapathMaps.eventMaps { unlink(Self.mapPin(bpffs, m)) }
        rmdir("\(bpffs)/links")
        rmdir("\(bpffs)/maps")
        rmdir(bpffs)
    }
}
