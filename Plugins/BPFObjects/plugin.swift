// The build-tool plugin that turns bpf/*.bpf.c into objects embedded in the binary, the
// way `bpftool gen skeleton` does for C programs: the agent never looks for a .o on disk.
import Foundation
import PackagePlugin

@main
struct BPFObjects: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let bpfDir = context.package.directoryURL.appending(path: "bpf")
        let fm = FileManager.default
        let entries = try fm.contentsOfDirectory(atPath: bpfDir.path(percentEncoded: false)).sorted()
        let sources = entries.filter { $0.hasSuffix(".bpf.c") }.map { bpfDir.appending(path: $0) }
        // Every header is an input of every object: a changed struct rebuilds everything.
        var headers: [URL] = []
        for sub in ["include", "lib"] {
            let dir = bpfDir.appending(path: sub)
            let names = (try? fm.contentsOfDirectory(atPath: dir.path(percentEncoded: false))) ?? []
            headers += names.filter { $0.hasSuffix(".h") }.sorted().map { dir.appending(path: $0) }
        }
        let clang = try context.tool(named: "clang").url
        let embed = try context.tool(named: "weft-bpf-embed").url
        let out = context.pluginWorkDirectoryURL
        let archInclude = "/usr/include/\(Self.multiarch)-linux-gnu"

        var commands: [Command] = []
        var objects: [URL] = []
        for src in sources {
            let obj = out.appending(path: src.lastPathComponent.replacingOccurrences(of: ".c", with: ".o"))
            objects.append(obj)
            commands.append(.buildCommand(
                displayName: "Compiling BPF \(src.lastPathComponent)",
                executable: clang,
                arguments: [
                    "-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-Werror",
                    "-I", bpfDir.appending(path: "include").path(percentEncoded: false),
                    "-I", bpfDir.appending(path: "lib").path(percentEncoded: false),
                    "-I", archInclude,
                    "-c", src.path(percentEncoded: false), "-o", obj.path(percentEncoded: false),
                ],
                inputFiles: [src] + headers,
                outputFiles: [obj]
            ))
        }
        let swiftOut = out.appending(path: "EmbeddedBPFObjects.swift")
        commands.append(.buildCommand(
            displayName: "Embedding BPF objects",
            executable: embed,
            arguments: [swiftOut.path(percentEncoded: false)] + objects.map { $0.path(percentEncoded: false) },
            inputFiles: objects,
            outputFiles: [swiftOut]
        ))
        return commands
    }

    #if arch(arm64)
    static let multiarch = "aarch64"
    #else
    static let multiarch = "x86_64"
    #endif
}
