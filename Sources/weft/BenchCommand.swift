import ArgumentParser
import Foundation
import WeftConfig
import WeftDataplane

/// Measurements scripts/bench calls; hidden from help (not an operator command).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Internal measurements for scripts/bench.",
                                                    shouldDisplay: false, subcommands: [Maglev.self])

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
