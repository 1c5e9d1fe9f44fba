import ArgumentParser
import Foundation
import WeftAgent
import WeftConfig
import WeftStore
import Yams

/// Options of every command that talks to the agent.
struct AdminOptions: ParsableArguments {
    @Option(help: "The agent's admin socket.")
    var adminSocket = "/run/weft/agent.sock"

    /// Sends a request; an unreachable agent or a refused request is one line and exit 1.
    func send(_ request: AdminRequest) -> AdminResponse {
        let r: AdminResponse
        do { r = try AdminClient.send(request, socket: adminSocket) } catch { fail("\(error)") }
        if !r.ok {
            for d in r.diagnostics ?? [] { printDiagnostic(d) }
            fail(r.error ?? "the agent refused the request")
        }
        return r
    }
}

func printDiagnostic(_ d: Diagnostic) {
    print(d)
    if let s = d.snippet { print(s) }
}

/// Reads -f paths (files or directories of *.yaml/*.yml) and checks each resource on its
/// own before anything is sent; cross-resource checks need the agent's config and run there.
func readPolicyFiles(_ paths: [String]) -> [SourceFile] { readAndCheckPolicyFiles(paths).files }

/// The files, and the ids of the resources they hold.
func readAndCheckPolicyFiles(_ paths: [String]) -> (files: [SourceFile], ids: [ResourceID]) {
    var files: [SourceFile] = []
    for path in paths {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { fail("\(path): no such file or directory") }
        let list = isDir.boolValue ? ((try? ConfigLoader.configFiles(in: path)) ?? []) : [path]
        for f in list {
            guard let data = FileManager.default.contents(atPath: f), let text = String(data: data, encoding: .utf8) else {
                fail("\(f): cannot read it as UTF-8 text")
            }
            files.append(SourceFile(path: f, text: text))
        }
    }
    var errors = false
    var ids: [ResourceID] = []
    for f in files {
        let parsed = ConfigLoader.parse(text: f.text, file: f.path)
        for d in parsed.diagnostics where d.severity == .error {
            printDiagnostic(d)
            errors = true
        }
        ids += parsed.resources.map(\.id)
    }
    if errors { fail("not sent: fix the errors above") }
    return (files, ids)
}

struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "apply",
        abstract: "Validate policy files and commit them on the agent, all or nothing.")
    @Option(name: .shortAndLong, parsing: .upToNextOption, help: "Files or directories.") var file: [String]
    @OptionGroup var admin: AdminOptions
    @OptionGroup var etcd: EtcdOptions
    @OptionGroup var waiting: WaitOptions
    @Option(help: "Mesh root namespace the agents validate with (cluster mode).") var rootNamespace = "weft-system"

    func run() async throws {
        let files = readPolicyFiles(file)
        if let endpoints = etcd.endpoints() {
            let (waiting, rootNamespace) = (waiting, rootNamespace)
            return await etcd.with(endpoints) { client in
                let r = try await ClusterWriter(client: client, rootNamespace: rootNamespace).apply(files)
                try await waiting.report(r, verb: "applied", client: client)
            }
        }
        var req = AdminRequest(op: .apply)
        req.files = files
        let r = admin.send(req)
        for d in r.diagnostics ?? [] { printDiagnostic(d) }
        if r.changed == true {
            print("applied: revision \(r.revision ?? 0) (datapath programmed in \(String(format: "%.1f", r.datapathMs ?? 0)) ms)")
        } else {
            print("unchanged: revision \(r.revision ?? 0) already holds these resources")
        }
    }
}

struct DeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete",
        abstract: "Remove the resources named in policy files from the agent, all or nothing.")
    @Option(name: .shortAndLong, parsing: .upToNextOption, help: "Files or directories.") var file: [String]
    @OptionGroup var admin: AdminOptions
    @OptionGroup var etcd: EtcdOptions
    @OptionGroup var waiting: WaitOptions
    @Option(help: "Mesh root namespace the agents validate with (cluster mode).") var rootNamespace = "weft-system"

    func run() async throws {
        let ids = readAndCheckPolicyFiles(file).ids
        if let endpoints = etcd.endpoints() {
            let (waiting, rootNamespace) = (waiting, rootNamespace)
            return await etcd.with(endpoints) { client in
                let r = try await ClusterWriter(client: client, rootNamespace: rootNamespace).delete(ids)
                try await waiting.report(r, verb: "deleted", client: client)
            }
        }
        var req = AdminRequest(op: .delete)
        req.ids = ids
        let r = admin.send(req)
        print("deleted: revision \(r.revision ?? 0) (datapath programmed in \(String(format: "%.1f", r.datapathMs ?? 0)) ms)")
    }
}

struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Show resources the agent serves.")
    @Argument(help: "Kind (ServiceEntry, se, virtualservices, …, or all).") var kind: String
    @Argument(help: "Name.") var name: String?
    @Option(name: .shortAndLong, help: "Namespace.") var namespace: String?
    @Option(name: .shortAndLong, help: "yaml or json (default: a table).") var output: String?
    @OptionGroup var admin: AdminOptions
    @OptionGroup var etcd: EtcdOptions

    func run() async throws {
        let list: [StoredResource]
        if let endpoints = etcd.endpoints() {
            let (kind, name, namespace) = (kind, name, namespace)
            list = await etcd.with(endpoints) { client in
                try StoredResource.select(try await ClusterConfigState.read(client).parsed().documents, kind: kind, name: name, namespace: namespace)
            }
        } else {
            var req = AdminRequest(op: .get)
            req.kind = kind
            req.name = name
            req.namespace = namespace
            list = admin.send(req).resources ?? []
        }
        if list.isEmpty && name != nil { fail("\(kind) \(namespace ?? "*")/\(name!) not found") }
        switch output {
        case nil:
            printTable(["KIND", "NAMESPACE", "NAME", "ORIGIN"], list.map { [$0.id.kind, $0.id.namespace, $0.id.name, $0.origin] })
        case "yaml":
            print(list.map(\.yaml).joined(separator: "---\n"), terminator: "")
        case "json":
            let objects = list.compactMap { try? Yams.load(yaml: $0.yaml) }
            let data = try JSONSerialization.data(withJSONObject: objects.count == 1 && name != nil ? objects[0] : objects,
                                                  options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        default:
            fail("--output must be yaml or json")
        }
    }
}

struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "diff",
        abstract: "Show what applying policy files would change; exit 1 when something would.")
    @Option(name: .shortAndLong, parsing: .upToNextOption, help: "Files or directories.") var file: [String]
    @OptionGroup var admin: AdminOptions
    @OptionGroup var etcd: EtcdOptions

    func run() async throws {
        let files = readPolicyFiles(file)
        let entries: [DiffEntry]
        if let endpoints = etcd.endpoints() {
            entries = await etcd.with(endpoints) { client in
                let current = try await ClusterConfigState.read(client).parsed().documents
                let pushed = ConfigLoader.parse(files.map { ($0.text, $0.path, ClusterKeys.origin) })
                if pushed.hasErrors { throw ClusterError("rejected", diagnostics: pushed.diagnostics) }
                return DiffEntry.between(current, pushed.documents)
            }
        } else {
            var req = AdminRequest(op: .diff)
            req.files = files
            entries = admin.send(req).diff ?? []
        }
        var changes = 0
        for e in entries {
            switch e.change {
            case .unchanged: print("= \(e.id)")
            case .added:
                changes += 1
                print("+ \(e.id)")
                for line in e.proposed.split(separator: "\n", omittingEmptySubsequences: false).dropLast() { print("  + \(line)") }
            case .changed:
                changes += 1
                print("~ \(e.id)")
                for line in lineDiff(e.current ?? "", e.proposed) { print("  \(line)") }
            }
        }
        if changes > 0 { throw ExitCode(1) }
    }
}

/// A minimal line diff (longest common subsequence): `- old`, `+ new`, `  same`.
func lineDiff(_ a: String, _ b: String) -> [String] {
    let x = a.split(separator: "\n").map(String.init), y = b.split(separator: "\n").map(String.init)
    var lcs = [[Int]](repeating: [Int](repeating: 0, count: y.count + 1), count: x.count + 1)
    for i in stride(from: x.count - 1, through: 0, by: -1) {
        for j in stride(from: y.count - 1, through: 0, by: -1) {
            lcs[i][j] = x[i] == y[j] ? lcs[i + 1][j + 1] + 1 : max(lcs[i + 1][j], lcs[i][j + 1])
        }
    }
    var out: [String] = []
    var i = 0, j = 0
    while i < x.count || j < y.count {
        if i < x.count && j < y.count && x[i] == y[j] { out.append("  \(x[i])"); i += 1; j += 1 }
        else if i < x.count && (j == y.count || lcs[i + 1][j] >= lcs[i][j + 1]) { out.append("- \(x[i])"); i += 1 }
        else { out.append("+ \(y[j])"); j += 1 }
    }
    return out
}

struct HistoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "history", abstract: "Committed revisions kept for rollback.")
    @OptionGroup var admin: AdminOptions
    @OptionGroup var etcd: EtcdOptions
    @Flag(name: [.customShort("j"), .long], help: "JSON.") var json = false

    func run() async throws {
        let list: [RevisionSummary]
        if let endpoints = etcd.endpoints() {
            list = await etcd.with(endpoints) { try await ClusterReader(client: $0).history() }
        } else {
            list = admin.send(AdminRequest(op: .history)).history ?? []
        }
        if json { return printJSON(list) }
        let f = ISO8601DateFormatter()
        printTable(["REVISION", "TIME", "REASON", "RESOURCES", "HASH", ""], list.map {
            ["\($0.revision)", f.string(from: $0.time), $0.reason, "\($0.resources)", $0.contentHash, $0.current ? "(current)" : ""]
        })
    }
}

struct RollbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rollback",
        abstract: "Restore the applied resources of a kept revision (the config dir stays as it is) as a new revision.")
    @Argument(help: "Revision (see `weft history`).") var revision: UInt64
    @OptionGroup var admin: AdminOptions
    @OptionGroup var etcd: EtcdOptions
    @OptionGroup var waiting: WaitOptions
    @Option(help: "Mesh root namespace the agents validate with (cluster mode).") var rootNamespace = "weft-system"

    func run() async throws {
        if let endpoints = etcd.endpoints() {
            let (waiting, rootNamespace, revision) = (waiting, rootNamespace, revision)
            return await etcd.with(endpoints) { client in
                let r = try await ClusterWriter(client: client, rootNamespace: rootNamespace).rollback(to: revision)
                try await waiting.report(r, verb: "rolled back to revision \(revision)", client: client)
            }
        }
        var req = AdminRequest(op: .rollback)
        req.revision = revision
        let r = admin.send(req)
        for d in r.diagnostics ?? [] { printDiagnostic(d) }
        print(r.changed == true ? "rolled back to revision \(revision): now revision \(r.revision ?? 0)" : "unchanged: revision \(r.revision ?? 0) already matches revision \(revision)")
    }
}
