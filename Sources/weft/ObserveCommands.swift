import ArgumentParser
import Foundation
import WeftAgent
import WeftProxy

/// `weft graph`: the service graph a running agent sees, from its Istio metrics.
struct GraphCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "The service graph this node's agent sees: who calls which service, which workload serves it, at what rate, with what errors and p99, over mTLS or not.",
        discussion: "The same graph is a live page on the agent's metrics port: http://127.0.0.1:15090/graph (--metrics-address, --metrics-port).")

    @OptionGroup var admin: AdminOptions
    @Option(help: "Seconds the rates, error shares and p99 are over (5 to 300; the agent samples its metrics every 5 s).")
    var window: Double = 60
    @Flag(name: [.customShort("j"), .long], help: "JSON.") var json = false

    func run() throws {
        var req = AdminRequest(op: .graph)
        req.window = window
        guard let g = admin.send(req).graph else { fail("the agent sent no graph") }
        if json { return printJSON(g) }
        if g.edges.isEmpty {
            print("no requests seen yet")
            return
        }
        func name(_ id: String) -> String {
            id.hasPrefix("unknown:") ? "(no workload)" : String(id.drop { $0 != ":" }.dropFirst())
        }
        print(g.window > 0 ? "rates over the last \(Int(g.window.rounded())) s" : "one sample so far: rates read 0 until the next (5 s)")
        printTable(["FROM", "TO", "PROTOCOL", "RATE/S", "ERRORS", "P99 MS", "MTLS", "TOTAL"], g.edges.map { e in
            [name(e.source), name(e.destination), e.protocolName, String(format: "%.2f", e.rate),
             e.errorRate.map { String(format: "%.1f%%", $0 * 100) } ?? "-", e.p99Millis.map { String(format: "%.1f", $0) } ?? "-",
             e.mutualTLS ? "yes" : "no", String(format: "%.0f", e.total)]
        })
    }
}
