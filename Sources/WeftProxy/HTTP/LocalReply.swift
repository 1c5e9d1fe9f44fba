import Foundation
import NIOHTTP1
import WeftConfig

/// A response the proxy produces itself. Status, body text and response flags follow
/// Envoy's, so operators read weft's 503s the way they read Istio's.
struct LocalReply {
    var status: HTTPResponseStatus
    var body: String
    var flags: [String]
    var headers: [(String, String)] = []

    /// NR: no route matched.
    static let noRoute = LocalReply(status: .notFound, body: "", flags: ["NR"])
    /// UH: the cluster has no endpoint.
    static let noHealthyUpstream = LocalReply(status: .serviceUnavailable, body: "no healthy upstream", flags: ["UH"])

    /// UF / UT / URX…: an attempt that produced no response to deliver.
    static func upstreamFailure(status: Int, flags: [String]) -> LocalReply {
        if status == 504 {
            return LocalReply(status: .gatewayTimeout, body: "upstream request timeout", flags: flags)
        }
        return LocalReply(status: HTTPResponseStatus(statusCode: status),
                          body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure", flags: flags)
    }

    /// An AuthorizationPolicy denied the request (Envoy's RBAC filter reply).
    static let accessDenied = LocalReply(status: .forbidden, body: "RBAC: access denied", flags: [])
    /// A path that cannot be normalized safely (an encoded NUL, control characters).
    static let badPath = LocalReply(status: .badRequest, body: "Bad Request", flags: ["DPE"])
    /// A request weft cannot pass on safely (a TRACE with a body: NIO's encoder would send
    /// that body unframed, the next request as far as the upstream is concerned).
    static let badRequest = LocalReply(status: .badRequest, body: "Bad Request", flags: ["DPE"])

    /// UO: a connectionPool limit (circuit breaker) is full.
    static let overflow = LocalReply(status: .serviceUnavailable,
                                     body: "upstream connect error or disconnect/reset before headers. reset reason: overflow", flags: ["UO"])

    /// FI: an injected abort. A gRPC status is answered the gRPC way: HTTP 200 with the
    /// status in grpc-status (a trailers-only response).
    static func faultAbort(_ a: FaultAbort) -> LocalReply {
        if let name = a.grpcStatus {
            let code = GRPCStatus.code(name) ?? 2
            return LocalReply(status: .ok, body: "", flags: ["FI"],
                              headers: [("content-type", "application/grpc"), ("grpc-status", String(code)), ("grpc-message", "fault filter abort")])
        }
        return LocalReply(status: HTTPResponseStatus(statusCode: a.httpStatus ?? 503), body: "fault filter abort", flags: ["FI"])
    }

    /// UT: the route timeout expired before a response.
    static let routeTimeout = upstreamFailure(status: 504, flags: ["UT"])
}

/// gRPC status codes by the names Istio's config uses.
enum GRPCStatus {
    static let names = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                        "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]

    static func code(_ name: String) -> Int? {
        if let n = Int(name) { return n }
        return names.firstIndex(of: name.uppercased())
    }

    /// The gRPC status for an HTTP status (gRPC's HTTP-to-status mapping, as Envoy uses
    /// for its local replies to gRPC requests).
    static func fromHTTP(_ status: Int) -> Int {
        switch status {
        case 200: return 0
        case 400: return 13
        case 401: return 16
        case 403: return 7
        case 404: return 12
        case 429, 502, 503, 504: return 14
        default: return 2
        }
    }
}
