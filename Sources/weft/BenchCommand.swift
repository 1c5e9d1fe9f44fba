import ArgumentParser
import Foundation
import WeftAgent
import WeftConfig
import WeftDataplane
import WeftStore

/// Measurements scripts/bench calls; hidden from help (not an operator command).
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Internal measurements for scripts/bench.",
                                                    shouldDisplay: false, subcommands: [Maglev.self, ClusterWatchers.self, EtcdPut.self])

    struct ClusterWatchers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cluster-watchers",
            abstract: "Simulated nodes that follow the cluster's config and report (etcd fan-out), until killed.")
        @OptionGroup var etcd: EtcdOptions
        @Option var count = 200
        @Option var prefix = "sim"

        func run() async throws {
            guard let endpoints = etcd.endpoints() else { fail("--etcd is needed") }
            let (count, prefix) = (count, prefix)
            await etcd.with(endpoints) { try await ClusterBenchmarks.watchers($0, count: count, prefix: prefix) }
        }
    }

    struct EtcdPut: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "etcd-put", abstract: "etcd's write round trip, one put at a time (JSON).")
        @OptionGroup var etcd: EtcdOptions
        @Option var bytes = 512
        @Option var count = 200

        func run() async throws {
            guard let endpoints = etcd.endpoints() else { fail("--etcd is needed") }
            let (bytes, count) = (bytes, count)
            let ms = await etcd.with(endpoints) { try await ClusterBenchmarks.putLatency($0, bytes: bytes, count: count) }.sorted()
            func pct(_ p: Double) -> Double { ms[min(ms.count - 1, Int(Double(ms.count) * p))] }
            print("{\"bytes\": \(bytes), \"count\": \(count), \"p50_ms\": \(String(format: "%.2f", pct(0.5))), \"p99_ms\": \(String(format: "%.2f", pct(0.99)))}")
        }
    }


    struct Maglev: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Time building Maglev tables for S services × B backends.")
        @Option var services = 1000
        @Option var backends = 100
        @Option var tableSize = LoadBalancer.defaultMaglevTableSize

        func run() throws {
            let start = ContinuousClock.now
            var checksum: UInt64 = 0
            for s in 0..<services {
                let list = (0..<backends).map { b in
                    BackendAddress(address: IPAddress("10.\(s / 250).\(s % 250).\(b % 250)")!, port: UInt16(8000 + b / 250))
                }
                let table = DesiredState.table(.maglev(tableSize: tableSize), backends: list, weights: Array(repeating: 1, count: backends))
                checksum &+= UInt64(table[0])
            }
            let d = ContinuousClock.now - start
            let seconds = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
            print("{\"services\": \(services), \"backends\": \(backends), \"tableSize\": \(tableSize), \"seconds\": \(String(format: "%.3f", seconds)), \"checksum\": \(checksum)}")
        }
    }
}
