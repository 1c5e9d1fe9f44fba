import Testing
@testable import WeftDataplane
import WeftBPF

/// What the agent makes of a probe table: which missing features stop it (and when), which
/// it does without, and the one line each gets.
@Suite struct KernelSupportTests {
    static func row(_ feature: String, _ need: KernelFeature.Need, _ result: ProbeResult, since: String = "", config: String = "",
                    neededBy: String = "something", degraded: String = "") -> KernelFeature {
        KernelFeature(feature: feature, since: since, config: config, neededBy: neededBy, need: need, degraded: degraded, result: result)
    }

    static let table = KernelSupport(kernel: "4.19.0-27-amd64", features: [
        row("ringbuf maps (weft_events_v1)", .always, .missing("the kernel does not create such maps"), since: "5.8",
            neededBy: "weft monitor's kernel events"),
        row("cgroup/connect4 programs (cgroup_sock_addr)", .always, .available, since: "4.17", config: "CONFIG_CGROUP_BPF"),
        row("helper bpf_sk_assign", .interfaces, .missing("not available to tc programs"), since: "5.7",
            neededBy: "STRICT at the node's interfaces and inbound steering (--interfaces)"),
        row("helper bpf_set_retval", .degradable, .missing("not available to cgroup/connect4 programs"), since: "6.1",
            neededBy: "refusing a connect() to a service with no endpoint with ECONNREFUSED",
            degraded: "a connect() to a service with no endpoint fails with EPERM, not ECONNREFUSED"),
        row("tcx links", .info, .missing("Invalid argument"), since: "6.6"),
        row("cgroup v2", .always, .unknown("Operation not permitted: needs root or CAP_BPF")),
    ])

    @Test func whatStopsTheAgentAndWhen() {
        #expect(Self.table.blocking(interfaces: false).map(\.feature) == ["ringbuf maps (weft_events_v1)"])
        #expect(Self.table.blocking(interfaces: true).map(\.feature) == ["ringbuf maps (weft_events_v1)", "helper bpf_sk_assign"])
        #expect(Self.table.degradations.map(\.feature) == ["helper bpf_set_retval"])
        #expect(Self.table.lacks("helper bpf_set_retval"))
        #expect(!Self.table.lacks("cgroup/connect4 programs (cgroup_sock_addr)"))
        // A probe that could not tell degrades nothing; nor does a feature nothing uses.
        #expect(!Self.table.lacks("cgroup v2"))
        #expect(!Self.table.lacks("no such row"))
    }

    @Test func oneLineNamesTheFeatureTheReleaseAndWhatNeedsIt() {
        let f = Self.table.features
        #expect(f[0].missingLine == "this kernel lacks ringbuf maps (weft_events_v1) (Linux 5.8) [the kernel does not create such maps]: needed for weft monitor's kernel events")
        #expect(f[3].missingLine == "this kernel lacks helper bpf_set_retval (Linux 6.1) [not available to cgroup/connect4 programs]; weft does without it: a connect() to a service with no endpoint fails with EPERM, not ECONNREFUSED")
        #expect(!f[0].missingLine.contains("\n"))
    }
}
