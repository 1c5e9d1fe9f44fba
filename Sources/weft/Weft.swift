// The `weft` binary: the node agent and the operator's tool in one.
import ArgumentParser
import Foundation

@main
struct Weft: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weft",
        abstract: "A transparent, sidecar-less service mesh for Linux nodes.",
        subcommands: [AgentCommand.self, ValidateCommand.self, ServiceCommand.self, MaglevCommand.self,
                      ProgCommand.self, MapCommand.self, StatusCommand.self, ApplyCommand.self, DeleteCommand.self, GetCommand.self,
                      DiffCommand.self, HistoryCommand.self, RollbackCommand.self, CACommand.self, CertCommand.self, AuthzCommand.self, GraphCommand.self, MonitorCommand.self, DoctorCommand.self, BenchCommand.self]
    )
}

/// Options every inspect command shares.
struct InspectOptions: ParsableArguments {
    @Option(help: "bpffs directory the agent pinned its maps and links in.")
    var bpffs: String = "/sys/fs/bpf/weft"

    @Flag(name: [.customShort("j"), .long], help: "Print JSON for scripts.")
    var json = false
}

/// Prints an error as one line and exits 1.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("weft: \(message)\n".utf8))
    exit(1)
}

func printJSON<T: Encodable>(_ value: T) {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    guard let data = try? enc.encode(value) else { fail("cannot encode JSON") }
    print(String(decoding: data, as: UTF8.self))
}

/// Left-aligned columns for people.
func printTable(_ header: [String], _ rows: [[String]]) {
    let all = [header] + rows
    var widths = [Int](repeating: 0, count: header.count)
    for r in all { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in all {
        let line = r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
        print(line.joined(separator: "  "))
    }
}
