import Foundation
import NIOConcurrencyHelpers

/// One JSON line per request, field names as in Istio's JSON access log
/// (meshConfig.accessLogEncoding: JSON), so existing log pipelines parse it unchanged.
public final class AccessLog: Sendable {
    private let out: NIOLockedValueBox<FileHandle>

    /// `path` "-" is standard output; anything else is appended to.
    public init(path: String) throws {
        if path == "-" {
            out = NIOLockedValueBox(FileHandle.standardOutput)
            return
        }
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw ProxyError("cannot create access log \(path) (--access-log)")
            }
        }
        guard let h = FileHandle(forWritingAtPath: path) else { throw ProxyError("cannot open access log \(path) (--access-log)") }
        h.seekToEndOfFile()
        out = NIOLockedValueBox(h)
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    struct Line: Encodable {
        var start_time: String
        var method: String
        var path: String
        var `protocol`: String
        var response_code: Int
        var grpc_status: Int?
        var response_flags: String
        var bytes_received: Int
        var bytes_sent: Int
        var duration: Int
        var upstream_host: String?
        var upstream_cluster: String?
        var route_name: String?
        var authority: String
        var x_request_id: String?
        var attempts: Int
        var downstream_remote_address: String
        var source_workload: String?
        var destination_service: String
    }

    /// Writes one request's line.
    public func write(_ r: RequestRecord) {
        let line = Line(start_time: ISO8601DateFormatter.string(from: r.start, timeZone: .gmt, formatOptions: [.withInternetDateTime, .withFractionalSeconds]),
                        method: r.method, path: r.path, protocol: r.protocolName, response_code: r.status, grpc_status: r.grpcStatus,
                        response_flags: r.flags.isEmpty ? "-" : r.flags.joined(separator: ","), bytes_received: r.requestBytes,
                        bytes_sent: r.responseBytes, duration: Int(r.durationMillis.rounded()), upstream_host: r.upstream,
                        upstream_cluster: r.cluster, route_name: r.route, authority: r.authority, x_request_id: r.requestID,
                        attempts: r.attempts, downstream_remote_address: r.peers.client,
                        source_workload: r.peers.source.map { "\($0.metadata.namespace)/\($0.metadata.name)" },
                        destination_service: r.peers.destinationHost)
        guard var data = try? Self.encoder.encode(line) else { return }
        data.append(0x0A)
        out.withLockedValue { $0.write(data) }
    }
}
