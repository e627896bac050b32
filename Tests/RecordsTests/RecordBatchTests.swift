import CSupport
import TestSupport
import Testing
@testable import Records


func randomBytes(_ count: Int, _ rng: inout SeededGenerator) -> [UInt8] {
    (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

func randomBatch(_ rng: inout SeededGenerator) -> RecordBatch {
    let base = Int64.random(in: 0...1_800_000_000_000, using: &rng)
    func headers(_ n: Int) -> [Header] {
        (0..<n).map { _ in
            Header(key: randomBytes(Int.random(in: 0...12, using: &rng), &rng),
                   value: randomBytes(Int.random(in: 0...40, using: &rng), &rng))
        }
    }
    let records = (0..<Int.random(in: 0...20, using: &rng)).map { _ in
        Record(timestamp: base + Int64.random(in: 0...100_000, using: &rng),
               headers: headers(Int.random(in: 0...4, using: &rng)),
               properties: headers(Int.random(in: 0...2, using: &rng)),
               value: randomBytes(Int.random(in: 0...300, using: &rng), &rng))
    }
    return RecordBatch(streamID: rng.next(), rangeIndex: UInt32.random(in: 0...1000, using: &rng),
                       baseOffset: rng.next() >> 8, baseTimestamp: base,
                       properties: headers(Int.random(in: 0...3, using: &rng)), records: records)
}

func decode(_ bytes: [UInt8], limits: RecordLimits = .default) throws(RecordError) -> RecordBatch {
    try bytes.withUnsafeBytes { raw in
        Result { () throws(RecordError) -> RecordBatch in
            RecordBatch(try RecordBatchView(validating: raw, limits: limits))
        }
    }.get()
}

func validationError(_ bytes: [UInt8], limits: RecordLimits = .default) -> RecordError? {
    do {
        _ = try decode(bytes, limits: limits)
        return nil
    } catch { return error }
}

@Suite struct RecordBatchTests {
    @Test func aBatchRoundTripsWithEveryField() throws {
        let batch = RecordBatch(
            streamID: 42, rangeIndex: 3, baseOffset: 1000, baseTimestamp: 1_700_000_000_000,
            properties: [Header("producer", "p-1")],
            records: [
                Record(timestamp: 1_700_000_000_000, headers: [Header("k", "v"), Header("trace", "abc")],
                       properties: [Header("tx", "7")], value: Array("hello".utf8)),
                Record(timestamp: 1_700_000_000_250, value: []),
                Record(timestamp: 1_700_000_000_100, headers: [Header("", "")], value: [0, 1, 2]),
            ])
        let bytes = try batch.encoded()
        #expect(bytes.count == batch.encodedSize)
        let decoded = try decode(bytes)
        #expect(decoded == batch)
        try bytes.withUnsafeBytes { raw in
            let view = try RecordBatchView(validating: raw)
            #expect(view.recordCount == 3)
            #expect(view.endOffset == 1003)
            #expect(view.maxTimestamp == 1_700_000_000_250)
            #expect(view.records.map(\.offset) == [1000, 1001, 1002])
            // The value is a view into the batch's own bytes, not a copy.
            var records = view.records.makeIterator()
            let first = records.next()!
            #expect(first.value.baseAddress! >= raw.baseAddress! && first.value.baseAddress! < raw.baseAddress! + raw.count)
        }
    }

    @Test(arguments: 0..<200)
    func randomBatchesRoundTrip(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let batch = randomBatch(&rng)
        let bytes = try batch.encoded()
        #expect(try decode(bytes) == batch, "seed \(seed)")
        #expect(try decode(bytes).encoded() == bytes, "seed \(seed)")
    }

    /// Random damage never traps: every mutated batch is refused with a typed error, or (if the damage happened to
    /// keep it valid, which a checksum makes all but impossible) decodes to something that re-encodes identically.
    @Test(arguments: 0..<100)
    func mutatedBatchesAreRejectedOrReencodeIdentically(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed ^ 0xABCDEF)
        let original = try randomBatch(&rng).encoded()
        for _ in 0..<50 {
            var bytes = original
            switch Int.random(in: 0...3, using: &rng) {
            case 0:  // flip bits
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8(1 << Int.random(in: 0...7, using: &rng))
                }
            case 1:  // truncate
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 2:  // append garbage
                bytes += randomBytes(Int.random(in: 1...16, using: &rng), &rng)
            default:  // overwrite a length-like word
                let at = Int.random(in: 0..<max(1, bytes.count - 4), using: &rng)
                for i in 0..<min(4, bytes.count - at) { bytes[at + i] = 0xFF }
            }
            do {
                let decoded = try decode(bytes)
                #expect(try decoded.encoded() == bytes, "seed \(seed): a mutated batch decoded but differs")
            } catch {
                _ = error.description  // typed, and printable
            }
        }
    }

    @Test func checksumCatchesAFlippedValueBit() throws {
        var bytes = try RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0,
                                    records: [Record(timestamp: 0, value: Array(repeating: 7, count: 100))]).encoded()
        bytes[bytes.count - 1] ^= 0x10
        guard case .checksumMismatch = validationError(bytes) else {
            Issue.record("expected a checksum mismatch, got \(String(describing: validationError(bytes)))")
            return
        }
    }

    @Test func headerDamageIsNamed() throws {
        let good = try RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0,
                                   records: [Record(timestamp: 0, value: [1])]).encoded()
        var bad = good
        bad[12] = 0
        #expect(validationError(bad) == .badMagic(found: UInt32(littleEndian: 0x4252_5300)))
        bad = good
        bad[16] = 9
        #expect(validationError(bad) == .unsupportedVersion(9))
        #expect(validationError(Array(good.prefix(10)))
                == .truncated(field: "batch header", offset: 0, needed: 64, available: 10))
        #expect(validationError(Array(good.prefix(good.count - 1)))
                == .truncated(field: "batch", offset: 0, needed: good.count, available: good.count - 1))
    }

    @Test func limitsAreEnforcedOnReadAndOnWrite() throws {
        let batch = RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0, records: [
            Record(timestamp: 0, headers: [Header(String(repeating: "k", count: 300), "v")], value: [1]),
        ])
        // The writer refuses a key over the default limit...
        #expect(throws: RecordError.self) { _ = try batch.encoded() }
        // ...and a reader with a stricter limit than the writer's refuses what the writer accepted.
        let lenient = RecordLimits(maxKeyBytes: 1000)
        let bytes = try batch.encoded(limits: lenient)
        guard case .limitExceeded(let what, 300, 256, _) = validationError(bytes) else {
            Issue.record("expected a key limit error, got \(String(describing: validationError(bytes)))")
            return
        }
        #expect(what.contains("key"))
        let manyRecords = RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0,
                                      records: Array(repeating: Record(timestamp: 0, value: []), count: 10))
        let tight = RecordLimits(maxRecordsPerBatch: 5)
        #expect(throws: RecordError.limitExceeded(what: "record count", value: 6, limit: 5, offset: 20)) {
            _ = try manyRecords.encoded(limits: tight)
        }
        #expect(validationError(try manyRecords.encoded(), limits: tight)
                == .limitExceeded(what: "record count", value: 10, limit: 5, offset: 20))
    }

    @Test func aFullBufferLeavesTheBatchAsItWas() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 250, alignment: 8)
        defer { buffer.deallocate() }
        var builder = try RecordBatchBuilder(into: buffer, streamID: 9, rangeIndex: 1, baseOffset: 50,
                                             baseTimestamp: 1000)
        let value = [UInt8](repeating: 3, count: 60)
        try value.withUnsafeBytes { try builder.append(timestamp: 1001, value: $0) }
        try value.withUnsafeBytes { try builder.append(timestamp: 1002, value: $0) }
        #expect(throws: RecordError.self) { try value.withUnsafeBytes { try builder.append(timestamp: 1003, value: $0) } }
        #expect(builder.recordCount == 2)
        let length = builder.finish()
        let view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: buffer[..<length]))
        #expect(view.recordCount == 2)
        #expect(view.maxTimestamp == 1002)
    }

    @Test func timestampsBeforeTheBaseAreRefused() throws {
        let batch = RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 1000,
                                records: [Record(timestamp: 999, value: [])])
        #expect(throws: RecordError.self) { _ = try batch.encoded() }
    }

    @Test func concatenatedBatchesAreWalkedAndAFailureStopsTheWalk() throws {
        var rng = SeededGenerator(seed: 7)
        let a = try randomBatch(&rng).encoded()
        let b = try randomBatch(&rng).encoded()
        var corrupt = try randomBatch(&rng).encoded()
        corrupt[corrupt.count / 2] ^= 1
        let all = a + b + corrupt + a
        try all.withUnsafeBytes { raw in
            var iterator = RecordBatchSequence(raw).makeIterator()
            var good = 0
            var failures = 0
            while let next = iterator.next() {
                switch next {
                case .success: good += 1
                case .failure: failures += 1
                }
            }
            #expect(good == 2)
            #expect(failures == 1)
            #expect(iterator.failedAt == a.count + b.count)
        }
    }
}

/// Offsets and timestamps are sums; a batch whose sums would leave what the format expresses is refused by name.
@Suite struct RecordBatchBoundsTests {
    func outcome(base: UInt64, count: Int, timestamp: Int64 = 0, spread: Int64 = 0) -> RecordError? {
        let records = (0..<count).map { i in Record(timestamp: timestamp + (i == count - 1 ? spread : 0), value: [1]) }
        let bytes = try! RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: base, baseTimestamp: timestamp,
                                     records: records).encoded()
        return bytes.withUnsafeBytes { raw -> RecordError? in
            do {
                _ = try RecordBatchView(validating: raw)
                return nil
            } catch let error as RecordError { return error } catch { return nil }
        }
    }

    @Test func anEndOffsetPastTheLargestIsOutOfRange() {
        let max = RecordLimits.maxOffset
        #expect(outcome(base: max - 4, count: 4) == nil, "a batch may end exactly at the largest offset")
        for base in [max - 3, max, max + 1, UInt64.max - 4, UInt64.max - 3, UInt64.max] {
            guard case .outOfRange(let what, let offset)? = outcome(base: base, count: 4) else {
                Issue.record("base offset \(base) was not refused as out of range")
                continue
            }
            #expect(what.contains("base offset \(base)"), "\(what)")
            #expect(offset == 40)
        }
    }

    @Test func aTimestampPastInt64MaxIsOutOfRange() {
        #expect(outcome(base: 0, count: 2, timestamp: Int64.max - 10, spread: 10) == nil)
        // The builder writes the delta; the base is near the top, so base + delta wraps.
        var bytes = try! RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0,
                                     records: [Record(timestamp: 0, value: []), Record(timestamp: 100, value: [])]).encoded()
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: (Int64.max - 5).littleEndian, toByteOffset: 48, as: Int64.self)
        }
        RecordBatchView.setRangeIndex(0, in: &bytes)  // recomputes the checksum
        let error = bytes.withUnsafeBytes { raw -> RecordError? in
            do { _ = try RecordBatchView(validating: raw); return nil } catch let error as RecordError { return error } catch { return nil }
        }
        guard case .outOfRange(let what, _)? = error else {
            Issue.record("a wrapping timestamp was not refused: \(String(describing: error))")
            return
        }
        #expect(what.contains("timestamp"))
    }
}

extension RecordBatchBoundsTests {
    /// Found by HandlerFuzzTests (seed 4111308921): a record timestamp far from the base made the builder's
    /// subtraction trap in the client. It is a typed error.
    @Test func aTimestampFarFromTheBaseIsAnErrorInTheBuilder() {
        let batch = RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: Int64.min,
                                records: [Record(timestamp: Int64.max, value: [])])
        #expect(throws: RecordError.self) { try batch.encoded() }
    }
}
