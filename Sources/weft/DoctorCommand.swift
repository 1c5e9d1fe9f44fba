import ArgumentParser
import Foundation
import WeftDataplane

/// `weft doctor`: what this kernel offers weft's datapath, probed as the agent probes it
/// at start (nothing is attached to the node).
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Probe this kernel for every feature weft's datapath uses and say what runs.",
        discussion: "Exits 1 when the agent cannot start here (without --interfaces). Run as root: unprivileged, the probes cannot tell.")

    @Flag(name: [.customShort("j"), .long], help: "JSON output.") var json = false

    struct Report: Encodable {
        var kernel: String
        var agent: Bool
        var agentWithInterfaces: Bool
        var problems: [String]
        var features: [KernelFeature]
    }

    func run() throws {
        let support: KernelSupport
        do { support = try KernelSupport.probe() } catch { fail("\(error)") }
        let plain = support.blocking(interfaces: false)
        let withTC = support.blocking(interfaces: true)
        let problems = (withTC + support.degradations).map(\.missingLine)
        if json {
            printJSON(Report(kernel: support.kernel, agent: plain.isEmpty, agentWithInterfaces: withTC.isEmpty,
                             problems: problems, features: support.features))
        } else {
            print("kernel \(support.kernel)")
            printTable(["FEATURE", "STATUS", "LINUX", "CONFIG", "NEEDED BY"], support.features.map { f in
                var status = f.status
                if f.need == .info { status += " (unused)" } else if f.need == .degradable && f.status == "missing" { status = "degraded" }
                return [f.feature, status, f.since.isEmpty ? "-" : f.since, f.config.isEmpty ? "-" : f.config, f.neededBy]
            })
            print("")
            for line in problems { print(line) }
            if support.features.contains(where: { $0.status == "unknown" }) {
                print("some probes could not tell (run weft doctor as root)")
            }
            print(plain.isEmpty ? "weft agent: runs on this kernel" : "weft agent: cannot run on this kernel (\(plain.count) missing)")
            print(withTC.isEmpty ? "weft agent --interfaces: runs on this kernel" : "weft agent --interfaces: cannot run on this kernel (\(withTC.count) missing)")
        }
        if !plain.isEmpty { throw ExitCode(1) }
    }
}
