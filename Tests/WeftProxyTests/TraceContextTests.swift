import NIOHTTP1
import Testing
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

    @Test func hexIDs() {
        #expect(RequestTrace.hex(0x1, 0xffff_ffff_ffff_ffff) == "0000000000000001ffffffffffffffff")
    }
}
