import Testing
@testable import WeftConfig

/// Addresses for ServiceEntries that name none (Istio's DNS auto-allocation).
@Suite struct AutoAddressTests {
    func entry(_ name: String, namespace: String = "default", hosts: [String]? = nil, address: String? = nil) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: \(name), namespace: \(namespace)}
        spec:
          hosts: [\((hosts ?? ["\(name).example.com"]).joined(separator: ", "))]
        \(address.map { "  addresses: [\($0)]\n" } ?? "")  ports: [{number: 443, name: tls, protocol: TLS}]
          resolution: STATIC
          endpoints: [{address: 192.0.2.10}]
        """
    }

    func snapshot(_ docs: [String], keeping table: AutoAddresses = AutoAddresses()) throws -> Snapshot {
        var options = ValidationOptions()
        options.autoAddresses = table
        return try ConfigLoader.snapshot(ConfigLoader.parse(text: docs.joined(separator: "\n---\n"), file: "t.yaml"), revision: 1, options: options)
    }

    func addresses(_ s: Snapshot) -> [String: String] {
        Dictionary(uniqueKeysWithValues: s.serviceEntries.map { ("\($0.metadata.namespace)/\($0.metadata.name)", $0.addresses.map(\.description).joined(separator: ",")) })
    }

    @Test func givesEachAnAddressOfIstiosRangeTheSameEverywhere() throws {
        let a = try snapshot([entry("payments"), entry("ledger", namespace: "prod"), entry("named", address: "10.96.0.5"),
                              entry("wild", hosts: ["\"*.wild.example.com\""])])
        let got = addresses(a)
        #expect(got["default/named"] == "10.96.0.5" && got["default/wild"] == "")
        for key in ["default/payments", "prod/ledger"] { #expect(got[key]!.hasPrefix("240.240."), "\(key): \(got[key]!)") }
        #expect(got["default/payments"] != got["prod/ledger"])
        // Another node, another run: the same addresses from nothing.
        #expect(addresses(try snapshot([entry("ledger", namespace: "prod"), entry("payments")])) == got.filter { $0.key != "default/named" && $0.key != "default/wild" })
        #expect(a.autoAddresses.assigned.count == 2)
    }

    @Test func keepsAddressesAcrossRevisionsAndLetsGoOfWhatIsGone() throws {
        let first = try snapshot([entry("payments")])
        let mine = addresses(first)["default/payments"]!
        // A later revision with more services, kept table: the address does not move.
        let second = try snapshot([entry("payments")] + (0..<50).map { entry("s\($0)") }, keeping: first.autoAddresses)
        #expect(addresses(second)["default/payments"] == mine)
        #expect(Set(addresses(second).values).count == 51)
        // Given addresses of its own, it lets the allocated one go.
        let named = try snapshot([entry("payments", address: "10.96.0.9")], keeping: second.autoAddresses)
        #expect(named.autoAddresses.assigned.isEmpty)
    }

    @Test func collisionTakesTheNextFreeAddressAndNeverANamedOne() throws {
        // Whatever payments' hashed address is, it is taken (by a named VIP here).
        let hashed = AutoAddresses.address(AutoAddresses.slot("default/payments")).description
        let s = try snapshot([entry("payments"), entry("squatter", address: hashed)])
        let got = addresses(s)
        #expect(got["default/squatter"] == hashed)
        #expect(got["default/payments"]!.hasPrefix("240.240.") && got["default/payments"] != hashed)
    }
}
