import NIOHTTP1
import Testing
import Tracing
import WeftConfig
@testable import WeftProxy

/// The trace context parser reads what clients send: a malformed context is none (the
/// request starts its own trace), never a crash and never a half-read id.
@Suite struct TraceContextTests {
    func parse(_ fields: [(String, String)]) -> TraceContextIn? { TraceContextIn.parse(HTTPHeaders(fields)) }

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736", span = "00f067aa0ba902b7"

    @Test func w3c() throws {
        let c = try #require(parse([("traceparent", "00-\(trace)-\(span)-01"), ("tracestate", "a=1")]))
        #expect(c.traceID == trace && c.spanID == span && c.sampled == true && c.tracestate == "a=1" && c.formats == [.w3c])
        #expect(parse([("traceparent", "00-\(trace)-\(span)-00")])?.sampled == false)
        // A later version may add fields; version 00 may not; ff is invalid.
        #expect(parse([("traceparent", "01-\(trace)-\(span)-01-extra")])?.sampled == true)
        for bad in ["00-\(trace)-\(span)-01-extra", "ff-\(trace)-\(span)-01", "00-\(trace.uppercased())-\(span)-01",
                    "00-\(String(repeating: "0", count: 32))-\(span)-01", "00-\(trace)-0000000000000000-01", "00-\(trace)-\(span)-1",
                    "00-\(trace.dropLast())-\(span)-01", "00-\(trace)-\(span)", "", "---", "00-\(trace)-\(span)-0g"] {
            #expect(parse([("traceparent", bad)]) == nil, "\(bad)")
        }
    }

    @Test func b3Single() throws {
        let c = try #require(parse([("b3", "a3ce929d0e0e4736-\(span)-1-e457b5a2e4d86bd1")]))
        #expect(c.traceID == "0000000000000000a3ce929d0e0e4736" && c.shortTraceID && c.sampled == true && c.formats == [.b3Single])
        #expect(parse([("b3", "\(trace)-\(span)-d")])?.sampled == true)
        #expect(parse([("b3", "\(trace)-\(span)")])?.sampled == nil)
        for bad in ["0", "\(trace)-\(span)-2", "\(trace)-\(span)-1-xyz", "\(trace)", "\(trace)-\(span)-1-\(span)-1", "abc-\(span)"] {
            #expect(parse([("b3", bad)]) == nil, "\(bad)")
        }
    }

    @Test func b3Multi() throws {
        let c = try #require(parse([("X-B3-TraceId", trace.uppercased()), ("X-B3-SpanId", span), ("X-B3-Sampled", "true")]))
        #expect(c.traceID == trace && !c.shortTraceID && c.sampled == true && c.formats == [.b3Multi])
        #expect(parse([("x-b3-traceid", trace), ("x-b3-spanid", span), ("x-b3-flags", "1"), ("x-b3-sampled", "0")])?.sampled == true)
        #expect(parse([("x-b3-traceid", trace), ("x-b3-spanid", span)])?.sampled == nil)
        #expect(parse([("x-b3-traceid", trace), ("x-b3-spanid", span), ("x-b3-sampled", "maybe")]) == nil)
        #expect(parse([("x-b3-traceid", trace)]) == nil)
    }

    /// W3C's ids and decision win; B3 beside it is kept as a format to send back, with
    /// its own trace id length.
    @Test func severalFormats() throws {
        let c = try #require(parse([("traceparent", "00-0000000000000000a3ce929d0e0e4736-\(span)-01"), ("x-b3-traceid", "a3ce929d0e0e4736"),
                                    ("x-b3-spanid", "e457b5a2e4d86bd1"), ("x-b3-sampled", "0")]))
        #expect(c.spanID == span && c.sampled == true && c.formats == [.w3c, .b3Multi] && c.shortTraceID)
        // A malformed W3C field beside a good B3 one: B3's.
        #expect(parse([("traceparent", "garbage"), ("b3", "\(trace)-\(span)-0")])?.sampled == false)
    }

    /// What goes on to the next hop when no span is made here (a tracer that makes
    /// none: the decisions alone).
    @Test func decisionsWithoutSpans() {
        let never = TracingSettings(tracer: NoOpTracer(), samplingPercentage: 0, node: "n")
        let always = TracingSettings(tracer: NoOpTracer(), samplingPercentage: 100, node: "n")
        var bits: UInt64 = 7
        let random = { bits &+= 0x9E37_79B9_7F4A_7C15; return bits }
        // Not sampled, no context: nothing to do (the request goes on as it came).
        #expect(RequestTrace.begin(never, headers: [:], name: "x", kind: .client, random: random) == nil)
        // From another agent with no context: that agent did not sample it.
        #expect(RequestTrace.begin(always, headers: [:], name: "x", kind: .server, throughTunnel: true, random: random) == nil)
        // The caller said no: followed, its fields untouched.
        #expect(RequestTrace.begin(always, headers: HTTPHeaders([("traceparent", "00-\(trace)-\(span)-00")]), name: "x", kind: .client, random: random) == nil)
        // B3 that left the decision to us: the decision goes on with the caller's ids.
        let deferred = RequestTrace.begin(never, headers: HTTPHeaders([("x-b3-traceid", trace), ("x-b3-spanid", span)]), name: "x", kind: .client, random: random)
        #expect(deferred?.outgoing.map { "\($0.0)=\($0.1)" } == ["x-b3-traceid=\(trace)", "x-b3-spanid=\(span)", "x-b3-sampled=0"])
        // Sampled with span reporting off: new ids travel, sampled, with no span here.
        let quiet = RequestTrace.begin(always, policy: TracingPolicy(reportSpans: false), headers: [:], name: "x", kind: .client, random: random)
        #expect(quiet?.outgoing.count == 1 && quiet?.outgoing[0].1.hasSuffix("-01") == true)
    }

    @Test func newTraceparents() {
        #expect(RequestTrace.traceparent(0x1, 0xffff_ffff_ffff_ffff, 0xab, sampled: true)
            == "00-0000000000000001ffffffffffffffff-00000000000000ab-01")
        #expect(RequestTrace.traceparent(0, 1, 2, sampled: false).hasSuffix("-00"))
    }

    /// Field names are matched whatever their case; the first of each counts.
    @Test func fieldsInOnePass() {
        let f = TraceContextIn.Fields(HTTPHeaders([("X-B3-TraceId", "a"), ("host", "x"), ("x-b3-traceid", "b"), ("B3", "0"), ("traceparentx", "y")]))
        #expect(f.any && f[.traceID] == "a" && f[.b3] == "0" && f[.traceparent] == nil)
        #expect(!TraceContextIn.Fields(HTTPHeaders([("host", "x"), ("user-agent", "curl")])).any)
    }
}
