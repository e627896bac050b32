import CBaselines
import CSupport
import Foundation
import MallocCounter
import Records
import Wire

/// `es-perf codec`: the record batch format and the frame layer, beside the least work their job needs done in C
/// (copying and hashing the same bytes), all in one run.
struct CodecSuite: FigureSuite {
    let options: PerfOptions

    func run() throws {
        let scale = options.quick ? 10 : 1
        for (label, recordCount, valueBytes) in [("1k", 8, 96), ("64k", 64, 1000)] {
            try batch(label: label, recordCount: recordCount, valueBytes: valueBytes, iterations: 400_000 / scale
                      / (label == "1k" ? 1 : 32))
        }
        checksum(iterations: 200_000 / scale)
        try frameHeader(iterations: 20_000_000 / scale)
        try allocations()
    }

    let suiteName = "codec"

    /// Values and headers for one batch: `recordCount` records of `valueBytes` bytes, two headers each.
    private struct Sample {
        let values: [[UInt8]]
        let key = Array("trace-id".utf8)
        let headerValue = Array("0123456789abcdef".utf8)
        init(recordCount: Int, valueBytes: Int) {
            values = (0..<recordCount).map { i in (0..<valueBytes).map { UInt8(truncatingIfNeeded: $0 &+ i) } }
        }
    }

    private func encode(_ sample: Sample, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try sample.key.withUnsafeBytes { key in
            try sample.headerValue.withUnsafeBytes { headerValue in
                let headers = [RecordPair(key: key, value: headerValue), RecordPair(key: key, value: headerValue)]
                var builder = try RecordBatchBuilder(into: buffer, streamID: 7, rangeIndex: 1, baseOffset: 1000,
                                                     baseTimestamp: 1_700_000_000_000)
                for (i, value) in sample.values.enumerated() {
                    try value.withUnsafeBytes { raw in
                        try builder.append(timestamp: 1_700_000_000_000 + Int64(i), value: raw, headers: headers)
                    }
                }
                return builder.finish()
            }
        }
    }

    private func batch(label: String, recordCount: Int, valueBytes: Int, iterations: Int) throws {
        let sample = Sample(recordCount: recordCount, valueBytes: valueBytes)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer {
            buffer.deallocate()
            copy.deallocate()
        }
        let length = try encode(sample, into: buffer)
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<length])
        let trials = 5
        var encodeRates: [Double] = []
        var decodeRates: [Double] = []
        var copyHashRates: [Double] = []
        var hashRates: [Double] = []
        for _ in 0..<trials {
            var start = cs_monotonic_ns()
            for _ in 0..<iterations { _ = try encode(sample, into: buffer) }
            encodeRates.append(gigabytesPerSecond(length * iterations, since: start))

            start = cs_monotonic_ns()
            var sink = 0
            for _ in 0..<iterations {
                let view = try RecordBatchView(validating: bytes)
                for record in view.records { sink &+= Int(record.value.count) &+ Int(record.offset) }
            }
            decodeRates.append(gigabytesPerSecond(length * iterations, since: start))
            precondition(sink != 0)

            start = cs_monotonic_ns()
            var hash: UInt64 = 0
            for _ in 0..<iterations { hash ^= cb_copy_and_hash(copy.baseAddress, bytes.baseAddress, length) }
            copyHashRates.append(gigabytesPerSecond(length * iterations, since: start))

            start = cs_monotonic_ns()
            hash ^= cb_xxh3_repeat(bytes.baseAddress, length, UInt64(iterations))
            hashRates.append(gigabytesPerSecond(length * iterations, since: start))
            precondition(hash != 1)
        }
        emit("batch_encode_\(label)_gb_s", median(encodeRates), "GB/s", .higher,
             "C memcpy + XXH3 of the same \(length)-byte batch", median(copyHashRates))
        emit("batch_decode_\(label)_gb_s", median(decodeRates), "GB/s", .higher,
             "C XXH3 of the same \(length)-byte batch", median(hashRates))
    }

    /// The checksum as the record and frame code compute it (XXH3 through the C shim, from Swift) against a C loop
    /// calling libxxhash directly, on the same 64 KiB buffer.
    private func checksum(iterations: Int) {
        let length = 64 << 10
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 64)
        defer { buffer.deallocate() }
        for i in 0..<length { buffer[i] = UInt8(truncatingIfNeeded: i &* 7) }
        var ours: [Double] = []
        var theirs: [Double] = []
        for _ in 0..<5 {
            var start = cs_monotonic_ns()
            var hash: UInt64 = 0
            for _ in 0..<iterations { hash ^= cs_xxh3_64(buffer.baseAddress, length, 0) }
            ours.append(gigabytesPerSecond(length * iterations, since: start))
            start = cs_monotonic_ns()
            hash ^= cb_xxh3_repeat(buffer.baseAddress, length, UInt64(iterations))
            theirs.append(gigabytesPerSecond(length * iterations, since: start))
            precondition(hash != 1)
        }
        emit("checksum_64k_gb_s", median(ours), "GB/s", .higher, "XXH3-64 called from C on the same buffer",
             median(theirs))
    }

    private func frameHeader(iterations: Int) throws {
        let frame = Frame(operation: .append, requestID: 42, header: Array(repeating: 1, count: 20),
                          payload: Array(repeating: 2, count: 100))
        let bytes = try frame.encoded()
        var ours: [Double] = []
        var theirs: [Double] = []
        try bytes.withUnsafeBytes { raw in
            let fixed = UnsafeRawBufferPointer(rebasing: raw[..<FrameLayout.size])
            for _ in 0..<5 {
                var start = cs_monotonic_ns()
                var sink: UInt64 = 0
                for _ in 0..<iterations {
                    let header = try FrameHeaderCodec.parse(fixed, limits: .default)
                    sink &+= UInt64(header.rawOperation) &+ header.requestID &+ UInt64(header.headerLength)
                        &+ header.checksum &+ UInt64(header.flags.rawValue)
                }
                ours.append(Double(cs_monotonic_ns() - start) / Double(iterations))
                precondition(sink != 0)
                start = cs_monotonic_ns()
                precondition(cb_parse_frame_header_repeat(fixed.baseAddress, UInt64(iterations)) != 0)
                theirs.append(Double(cs_monotonic_ns() - start) / Double(iterations))
            }
        }
        emit("frame_header_decode_ns", median(ours), "ns", .lower, "the same checks and loads in C", median(theirs))
    }

    /// Allocations while validating a 64 KiB batch and walking its records through the view, against turning the
    /// same batch into owned values (`RecordBatch(view)`).
    private func allocations() throws {
        let sample = Sample(recordCount: 64, valueBytes: 1000)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        let length = try encode(sample, into: buffer)
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<length])
        let iterations = 1000
        var sink = 0
        var before = mc_thread_allocations()
        for _ in 0..<iterations {
            let view = try RecordBatchView(validating: bytes)
            for record in view.records {
                for header in record.headers { sink &+= header.value.count }
                sink &+= record.value.count
            }
        }
        let viaView = Double(mc_thread_allocations() - before) / Double(iterations)
        before = mc_thread_allocations()
        for _ in 0..<iterations {
            let owned = RecordBatch(try RecordBatchView(validating: bytes))
            sink &+= owned.records.count
        }
        let owned = Double(mc_thread_allocations() - before) / Double(iterations)
        precondition(sink != 0)
        emit("allocations_per_decoded_batch", viaView, "allocations", .lower,
             "decoding the same 64 KiB batch into owned values", owned)
    }

    private func gigabytesPerSecond(_ bytes: Int, since start: UInt64) -> Double {
        Double(bytes) / Double(cs_monotonic_ns() - start)
    }
}
