import ArgumentParser
import WeftConfig

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check policy files offline and print every problem with its position; exit 1 on any error."
    )

    @Option(name: .shortAndLong, parsing: .upToNextOption, help: "Files or directories to check.")
    var file: [String]

    @Option(name: .customLong("node"), help: "A node that exists (repeatable); WorkloadEntries on other nodes are warned about.")
    var nodes: [String] = []

    @Option(help: "Mesh root namespace (mesh-wide PeerAuthentication).")
    var rootNamespace = "weft-system"

    func run() throws {
        let parsed = ConfigLoader.parse(paths: file)
        do {
            let snap = try ConfigLoader.snapshot(parsed, revision: 1, options: ValidationOptions(rootNamespace: rootNamespace, knownNodes: Set(nodes)))
            for w in snap.warnings { print(w) }
            print("\(snap.resources.count) resources valid")
        } catch {
            for d in error.diagnostics {
                print(d)
                if let s = d.snippet { print(s) }
            }
            throw ExitCode(1)
        }
    }
}
