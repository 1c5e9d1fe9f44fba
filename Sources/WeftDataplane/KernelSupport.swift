import CLibbpf
import Foundation
import WeftBPF

/// One row of the kernel feature table: a thing weft's datapath uses, whether this kernel
/// has it, and what of weft needs it.
public struct KernelFeature: Sendable, Encodable {
    /// When weft needs a feature.
    public enum Need: String, Sendable, Encodable {
        /// Always: the agent does not start without it.
        case always
        /// Only for TC programs on the node's interfaces (--interfaces).
        case interfaces
        /// weft runs without it, doing without what `degraded` says.
        case degradable
        /// Reported for operators; weft does not use it.
        case info
    }

    public let feature: String
    /// The first Linux release with it, where it sets a floor ("" when older than any
    /// kernel weft can run on otherwise).
    public let since: String
    /// The kernel build options it needs ("" when none beyond BPF itself).
    public let config: String
    /// What of weft needs it.
    public let neededBy: String
    public let need: Need
    /// For a degradable feature: what weft does without it.
    public let degraded: String
    public let result: ProbeResult
    /// For a helper: the program sections that call it.
    public var usedIn: [String] = []

    /// "ok", "missing" or "unknown".
    public var status: String {
        switch result {
        case .available: return "ok"
        case .missing: return "missing"
        case .unknown: return "unknown"
        }
    }

    enum CodingKeys: String, CodingKey { case feature, status, detail, since, config, neededBy, need, degraded, usedIn }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(feature, forKey: .feature)
        try c.encode(status, forKey: .status)
        try c.encode(result.text, forKey: .detail)
        try c.encode(since, forKey: .since)
        try c.encode(config, forKey: .config)
        try c.encode(neededBy, forKey: .neededBy)
        try c.encode(need, forKey: .need)
        if need == .degradable { try c.encode(degraded, forKey: .degraded) }
        if !usedIn.isEmpty { try c.encode(usedIn, forKey: .usedIn) }
    }

    /// The one line an operator reads when it is missing.
    public var missingLine: String {
        var what = "this kernel lacks \(feature)"
        var needs: [String] = []
        if !since.isEmpty { needs.append("Linux \(since)") }
        if !config.isEmpty { needs.append(config) }
        if !needs.isEmpty { what += " (\(needs.joined(separator: ", ")))" }
        if !result.text.isEmpty { what += " [\(result.text)]" }
        what += need == .degradable ? "; weft does without it: \(degraded)" : ": needed for \(neededBy)"
        return what
    }
}

/// The kernel feature table of the running kernel, probed from what weft's embedded BPF
/// objects actually use (their program types, attach types, helper calls and map types),
/// plus the kernel facilities around them. `weft doctor` prints it; the agent refuses to
/// start on a kernel that lacks what it needs, one line per missing feature.
public struct KernelSupport: Sendable, Encodable {
    /// The row of the atomics that return the old value.
    public static let atomicFetch = "atomic fetch instructions (BPF_FETCH)"

    public let kernel: String
    public let features: [KernelFeature]

    /// What stops an agent: the missing features it needs (with `interfaces`, TC's too).
    public func blocking(interfaces: Bool) -> [KernelFeature] {
        features.filter { f in
            guard case .missing = f.result else { return false }
            return f.need == .always || (f.need == .interfaces && interfaces)
        }
    }

    /// The missing features weft does without.
    public var degradations: [KernelFeature] {
        features.filter { f in
            if case .missing = f.result { return f.need == .degradable }
            return false
        }
    }

    /// Whether a probe found `feature` (a row's name) missing: false when present, when
    /// the probe could not tell, and when there is no such row (the objects do not use it).
    public func lacks(_ feature: String) -> Bool {
        guard let row = features.first(where: { $0.feature == feature }), case .missing = row.result else { return false }
        return true
    }

    /// Probes the running kernel. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the
    /// throwaway namespace); without, rows say "unknown".
    public static func probe() throws -> KernelSupport {
        let sock = try Datapath.embeddedObject("sock.bpf.o")
        let tc = try Datapath.embeddedObject("tc.bpf.o")
        var rows: [KernelFeature] = []

        rows.append(KernelFeature(feature: "the bpf() system call", since: "", config: "CONFIG_BPF_SYSCALL",
                                  neededBy: "every part of the datapath", need: .always, degraded: "",
                                  result: KernelProbe.program(type: BPF_PROG_TYPE_SOCKET_FILTER, attach: bpf_attach_type(0))))
        let cgroup2: ProbeResult = KernelFeatures.cgroup2Mount() != nil ? .available
            : .missing("no cgroup2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
        rows.append(KernelFeature(feature: "cgroup v2", since: "", config: "CONFIG_CGROUPS",
                                  neededBy: "attaching to workloads' sockets and naming their workload", need: .always,
                                  degraded: "", result: cgroup2))

        // Programs, by what the objects hold: each type and attach type once.
        var programs: [(info: BPFObject.ProgramInfo, interfaces: Bool)] = []
        for p in sock.programInfo { programs.append((p, false)) }
        for p in tc.programInfo { programs.append((p, true)) }
        var programResult: [String: ProbeResult] = [:]
        for (p, onInterfaces) in programs where programResult[p.section] == nil {
            let r = KernelProbe.program(type: p.type, attach: p.attach)
            programResult[p.section] = r
            let meta = programMeta(p.section)
            rows.append(KernelFeature(feature: "\(p.section) programs (\(KernelProbe.programTypeName(p.type)))",
                                      since: meta.since, config: meta.config, neededBy: meta.capability,
                                      need: onInterfaces ? .interfaces : .always, degraded: "", result: r))
        }

        // Helpers: one row each, missing if any program that calls it cannot.
        var helperOrder: [Int32] = []
        var helperUsers: [Int32: [(info: BPFObject.ProgramInfo, interfaces: Bool)]] = [:]
        for p in programs {
            for h in p.info.helpers {
                if helperUsers[h] == nil { helperOrder.append(h) }
                helperUsers[h, default: []].append(p)
            }
        }
        for h in helperOrder {
            let users = helperUsers[h]!
            let name = KernelProbe.helperName(h)
            var lacking: [String] = []
            var unknown: String?
            var probed = Set<String>()
            for (p, _) in users where !probed.contains(p.section) {
                probed.insert(p.section)
                guard programResult[p.section] == .available else { continue }  // its own row says why
                switch KernelProbe.helper(h, type: p.type, attach: p.attach) {
                case .available: break
                case .missing: lacking.append(p.section)
                case .unknown(let why): unknown = why
                }
            }
            let result: ProbeResult = !lacking.isEmpty ? .missing("not available to \(lacking.joined(separator: ", ")) programs")
                : unknown.map { .unknown($0) } ?? .available
            let meta = helperMeta(name)
            let sections = users.map { $0.info.section }
            let onlyInterfaces = users.allSatisfy { $0.interfaces }
            let capabilities = unique(users.map { programMeta($0.info.section).capability })
            var row = KernelFeature(feature: "helper \(name)", since: meta.since, config: "",
                                    neededBy: meta.capability ?? capabilities.joined(separator: "; "),
                                    need: meta.degraded != nil ? .degradable : onlyInterfaces ? .interfaces : .always,
                                    degraded: meta.degraded ?? "", result: result)
            row.usedIn = unique(sections)
            rows.append(row)
        }

        // Instructions newer than the rest.
        let fetching = programs.filter { $0.info.usesAtomicFetch }
        if !fetching.isEmpty {
            var row = KernelFeature(feature: atomicFetch, since: "5.12", config: "",
                                    neededBy: "exact round robin (each connect() takes its own turn)", need: .degradable,
                                    degraded: "the agent loads the build of sock.bpf.c without them, whose round robin reads its turn and writes it back, so connects at the same instant on two CPUs may get the same endpoint",
                                    result: KernelProbe.atomicFetch())
            row.usedIn = unique(fetching.map { $0.info.section })
            rows.append(row)
        }

        // Map types.
        var mapOrder: [bpf_map_type] = []
        var mapUsers: [UInt32: [(name: String, interfaces: Bool)]] = [:]
        for (m, t) in sock.mapInfo {
            if mapUsers[t.rawValue] == nil { mapOrder.append(t) }
            mapUsers[t.rawValue, default: []].append((m, false))
        }
        for (m, t) in tc.mapInfo where !(mapUsers[t.rawValue] ?? []).contains(where: { $0.name == m }) {
            if mapUsers[t.rawValue] == nil { mapOrder.append(t) }
            mapUsers[t.rawValue, default: []].append((m, true))
        }
        for t in mapOrder {
            let users = mapUsers[t.rawValue]!
            let typeName = KernelProbe.mapTypeName(t)
            let meta = mapMeta(typeName)
            rows.append(KernelFeature(feature: "\(typeName) maps (\(users.map(\.name).joined(separator: ", ")))",
                                      since: meta.since, config: meta.config,
                                      neededBy: unique(users.map { mapPurpose($0.name) }).joined(separator: "; "),
                                      need: users.allSatisfy(\.interfaces) ? .interfaces : .always, degraded: "",
                                      result: KernelProbe.mapType(t)))
        }

        rows.append(KernelFeature(feature: "cgroup BPF links (BPF_LINK_CREATE)", since: "5.7", config: "CONFIG_CGROUP_BPF",
                                  neededBy: "programs that stay attached while the agent restarts (pinned links)",
                                  need: .always, degraded: "", result: KernelProbe.linkCreate()))
        rows.append(KernelFeature(feature: "BPF_LINK_UPDATE", since: "5.7", config: "",
                                  neededBy: "a restarted or upgraded agent swapping its programs in with no gap",
                                  need: .always, degraded: "", result: KernelProbe.linkUpdate()))
        rows.append(KernelFeature(feature: "lookup-and-delete on hash maps (BPF_MAP_LOOKUP_AND_DELETE_ELEM)", since: "5.14", config: "",
                                  neededBy: "taking a captured connection's destination (weft_capture_v1) in one system call",
                                  need: .degradable, degraded: "the agent looks the destination up and deletes it, two system calls",
                                  result: KernelProbe.hashLookupAndDelete()))
        let tcProbe = KernelProbe.tc()
        rows.append(KernelFeature(feature: "clsact qdisc with a cls_bpf direct-action filter", since: "",
                                  config: "CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF, CONFIG_NET_CLS_ACT",
                                  neededBy: programMeta("tc").capability, need: .interfaces, degraded: "",
                                  result: tcProbe.clsact))
        rows.append(KernelFeature(feature: "tcx links", since: "6.6", config: "",
                                  neededBy: "nothing: weft puts its TC programs on interfaces as clsact filters on every kernel (one path; a filter outlives the agent and a new one replaces it in place)",
                                  need: .info, degraded: "", result: tcProbe.tcx))
        let btf: ProbeResult = access("/sys/kernel/btf/vmlinux", R_OK) == 0 ? .available
            : .missing("/sys/kernel/btf/vmlinux is absent")
        rows.append(KernelFeature(feature: "kernel BTF", since: "", config: "CONFIG_DEBUG_INFO_BTF",
                                  neededBy: "nothing of weft's (its programs carry no CO-RE relocations); bpftool and tracing tools use it",
                                  need: .info, degraded: "", result: btf))
        return KernelSupport(kernel: KernelProbe.kernelRelease, features: rows)
    }

    private static func unique(_ xs: [String]) -> [String] {
        var seen = Set<String>()
        return xs.filter { seen.insert($0).inserted }
    }

    /// What each program section is for, and since when the kernel has it (the floor
    /// features are checked on Debian's kernels with scripts/test-kernel; the rest are the
    /// releases that introduced the hook).
    static func programMeta(_ section: String) -> (since: String, config: String, capability: String) {
        switch section {
        case "cgroup/connect4", "cgroup/connect6":
            return ("4.17", "CONFIG_CGROUP_BPF", "services at connect() (L4 load balancing, capture into the agent)")
        case "cgroup/sendmsg4", "cgroup/sendmsg6":
            return ("4.18", "CONFIG_CGROUP_BPF", "UDP services and DNS redirection at sendmsg()")
        case "cgroup/recvmsg4", "cgroup/recvmsg6":
            return ("5.2", "CONFIG_CGROUP_BPF", "UDP replies that come from the service address")
        case "cgroup/getpeername4", "cgroup/getpeername6":
            return ("5.8", "CONFIG_CGROUP_BPF", "getpeername() showing the service address")
        case "sockops":
            return ("4.13", "CONFIG_CGROUP_BPF", "capture (the agent learns where a captured connection was going)")
        case "cgroup_skb/ingress":
            return ("4.10", "CONFIG_CGROUP_BPF", "STRICT against plaintext from the same node")
        case "tc":
            return ("", "CONFIG_NET_CLS_BPF", "STRICT at the node's interfaces and inbound steering (--interfaces)")
        default:
            return ("", "", "weft's \(section) programs")
        }
    }

    /// Helpers that set a floor or have a way around them.
    static func helperMeta(_ name: String) -> (since: String, capability: String?, degraded: String?) {
        switch name {
        case "bpf_set_retval":
            return ("6.1", "refusing a connect() to a service with no endpoint with ECONNREFUSED",
                    "a connect() to a service with no endpoint fails with EPERM, not ECONNREFUSED")
        case "bpf_ringbuf_reserve", "bpf_ringbuf_submit":
            return ("5.8", "weft monitor's kernel events (reported from every hook)", nil)
        case "bpf_sk_lookup_tcp", "bpf_sk_lookup_udp", "bpf_sk_release", "bpf_sk_cgroup_id":
            return ("5.8", nil, nil)
        case "bpf_sk_assign":
            return ("5.7", nil, nil)
        default:
            return ("", nil, nil)
        }
    }

    static func mapMeta(_ type: String) -> (since: String, config: String) {
        switch type {
        case "ringbuf": return ("5.8", "")
        case "sockmap": return ("", "CONFIG_NET (before 5.13: CONFIG_BPF_STREAM_PARSER)")
        default: return ("", "")
        }
    }

    static func mapPurpose(_ name: String) -> String {
        switch name {
        case "weft_events_v1": return "weft monitor's kernel events"
        case "weft_inlisten_v1": return "inbound steering into the agent's listeners"
        case "weft_egress_v1": return "outboundTrafficPolicy REGISTRY_ONLY"
        default: return "the datapath's tables"
        }
    }
}
