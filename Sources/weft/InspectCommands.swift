import ArgumentParser
import Foundation
import WeftBPF
import WeftConfig
import WeftDataplane

func openMaps(_ o: InspectOptions) -> DatapathMaps {
    do { return try DatapathMaps(pinnedUnder: o.bpffs) } catch { fail("\(error)") }
}

struct ServiceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "service", abstract: "Inspect services in the kernel.",
                                                    subcommands: [List.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "VIP:port → backends with weight, state and table share.")
        @OptionGroup var o: InspectOptions

        func run() throws {
            let rows: [ServiceListing]
            do { rows = try openMaps(o).listServices() } catch { fail("\(error)") }
            if o.json { return printJSON(rows) }
            var table: [[String]] = []
            for s in rows {
                if s.backends.isEmpty { table.append([s.frontend, s.algorithm, "(no backends)", "", "", ""]) }
                for (i, b) in s.backends.enumerated() {
                    table.append([i == 0 ? s.frontend : "", i == 0 ? s.algorithm : "", "\(b.address) (\(b.id))",
                                  "\(b.weight)", b.state, String(format: "%.1f%%", b.share)])
                }
            }
            printTable(["FRONTEND", "ALGORITHM", "BACKEND (ID)", "WEIGHT", "STATE", "SHARE"], table)
        }
    }
}

struct MaglevCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "maglev", abstract: "Inspect Maglev tables.", subcommands: [Get.self])

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the lookup table of VIP:PORT (full table with -j).")
        @OptionGroup var o: InspectOptions
        @Argument(help: "Service frontend, e.g. 10.96.0.20:9080 or [fd00::20]:9080.") var frontend: String
        @Option(help: "tcp or udp.") var proto = "tcp"

        struct Out: Codable {
            var frontend: String
            var algorithm: String
            var tableSize: Int
            var backends: [String: Int]
            var table: [UInt32]
        }

        func run() throws {
            guard let (ip, port) = IPAddress.parseEndpoint(frontend) else { fail("\(frontend) is not ADDRESS:PORT") }
            guard let p = L4Protocol(rawValue: proto == "udp" ? 17 : proto == "tcp" ? 6 : 0) else { fail("--proto must be tcp or udp") }
            let maps = openMaps(o)
            let fe = Frontend(address: ip, port: port, proto: p)
            do {
                guard let svc = try maps.service(fe) else { fail("no service \(fe) in \(o.bpffs)") }
                let table = try maps.table(offset: svc.tableOff, size: svc.tableSize)
                let backends = try maps.readActual().backends
                var count: [String: Int] = [:]
                for id in table { count[backends[id]?.address.description ?? "id \(id)", default: 0] += 1 }
                let out = Out(frontend: fe.description, algorithm: DatapathMaps.algorithmName(svc.algo), tableSize: table.count, backends: count, table: table)
                if o.json { return printJSON(out) }
                if svc.algo != 2 { print("note: \(fe) uses \(out.algorithm), not maglev; this is its selection table") }
                print("\(fe)  \(out.algorithm)  M=\(table.count)")
                printTable(["BACKEND", "ENTRIES", "SHARE"], count.keys.sorted().map {
                    [$0, "\(count[$0]!)", String(format: "%.2f%%", Double(count[$0]!) * 100 / Double(max(table.count, 1)))]
                })
                print("first entries (backend id): " + table.prefix(32).map(String.init).joined(separator: " "))
            } catch { fail("\(error)") }
        }
    }
}

struct ProgCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "prog", abstract: "Inspect attached programs.", subcommands: [Show.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Programs attached through weft's pinned links.")
        @OptionGroup var o: InspectOptions

        func run() throws {
            let dir = Datapath.linkPin(o.bpffs, "")
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
                fail("no weft datapath at \(o.bpffs) (\(dir) is missing): the agent is probably not running; start `weft agent` or pass --bpffs")
            }
            do {
                let infos = try names.sorted().map { try PinnedProgramInfo(pin: dir + $0) }
                if o.json { return printJSON(infos) }
                printTable(["PROG", "NAME", "TYPE", "ATTACH", "CGROUP", "LINK", "TAG"], infos.map {
                    ["\($0.progID)", $0.name, $0.type, $0.attachType, cgroupPath(id: $0.cgroupID) ?? "id \($0.cgroupID)", "\($0.linkID)", $0.tag]
                })
            } catch { fail("\(error)") }
        }
    }
}

/// The path of a cgroup v2 directory by id (its inode), searched a few levels deep.
func cgroupPath(id: UInt64) -> String? {
    guard let root = KernelFeatures.cgroup2Mount() else { return nil }
    var queue = [(root, 0)]
    while !queue.isEmpty {
        let (dir, depth) = queue.removeFirst()
        if let cid = try? Datapath.cgroupID(dir), cid == id { return dir }
        guard depth < 4, let subs = try? FileManager.default.contentsOfDirectory(atPath: dir) else { continue }
        for s in subs {
            var isDir: ObjCBool = false
            let p = dir + "/" + s
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue { queue.append((p, depth + 1)) }
        }
    }
    return nil
}

struct MapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "map", abstract: "Inspect weft's pinned maps.", subcommands: [Show.self, Dump.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every map: type, sizes, capacity, entries.")
        @OptionGroup var o: InspectOptions

        func run() throws {
            let maps = openMaps(o)
            do {
                let rows = try maps.listMaps(bpffs: o.bpffs)
                if o.json { return printJSON(rows) }
                printTable(["ID", "NAME", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES"], rows.map {
                    ["\($0.id)", $0.name, $0.type, "\($0.keySize)B", "\($0.valueSize)B", "\($0.maxEntries)", "\($0.entries)"]
                })
            } catch { fail("\(error)") }
        }
    }

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every entry of one map, decoded.")
        @OptionGroup var o: InspectOptions
        @Argument(help: "Map name (see `weft map show`).") var name: String

        func run() throws {
            guard DatapathMaps.names.contains(name) else {
                fail("no map \(name); weft's maps are \(DatapathMaps.names.joined(separator: ", "))")
            }
            do {
                let rows = try MapDump.rows(openMaps(o), name)
                if o.json { return printJSON(rows.map { ["key": $0.0, "value": $0.1] }) }
                printTable(["KEY", "VALUE"], rows.map { [$0.0, $0.1] })
            } catch { fail("\(error)") }
        }
    }
}
