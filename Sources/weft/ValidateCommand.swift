import ArgumentParser
import WeftConfig

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check policy files offline and print every problem with its position."
    )

    @Option(name: .shortAndLong, parsing: .upToNextOption, help: "Files or directories to check.")
    var file: [String]

    func run() throws {
        let parsed = ConfigLoader.parse(paths: file)
        do {
            let snap = try ConfigLoader.snapshot(parsed, revision: 1)
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
