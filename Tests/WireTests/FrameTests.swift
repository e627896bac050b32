import CSupport
import TestSupport
import Records
import SwiftProtobuf
import Testing
@testable import Wire


func randomFrame(_ rng: inout SeededGenerator) -> Frame {
    let operation = OperationCode.allCases.randomElement(using: &rng)!
    var flags: FrameFlags = []
    if Bool.random(using: &rng) { flags.insert(.response) }
    if Bool.random(using: &rng) { flags.insert(.endOfStream) }
    if Bool.random(using: &rng) { flags.insert(.error) }
    let header = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let payload = (0..<Int.random(in: 0...2000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    return Frame(operation: operation, flags: flags, requestID: rng.next(), header: header, payload: payload)
}

func decodeAll(_ bytes: [UInt8], splits: [Int], limits: FrameLimits = .default, complete: Bool = true)
    throws(WireError) -> [Frame]
{
    var decoder = FrameDecoder(limits: limits)
    var frames: [Frame] = []
    var start = 0
    for end in splits + [bytes.count] where end >= start {
        frames += try decoder.decode(Array(bytes[start..<end]))
        start = end
    }
    if complete { #expect(decoder.bufferedBytes == 0, "bytes left over after whole frames") }
    return frames
}

@Suite struct FrameTests {
    @Test(arguments: 0..<100)
    func framesRoundTripInAnySplit(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let frames = (0..<Int.random(in: 1...5, using: &rng)).map { _ in randomFrame(&rng) }
        let bytes = try frames.flatMap { try $0.encoded() }
        // In one piece, in random pieces, and one byte at a time.
        #expect(try decodeAll(bytes, splits: []) == frames)
        let splits = (0..<Int.random(in: 1...10, using: &rng)).map { _ in Int.random(in: 0...bytes.count, using: &rng) }
            .sorted()
        #expect(try decodeAll(bytes, splits: splits) == frames, "seed \(seed)")
        if seed < 10 {
            #expect(try decodeAll(bytes, splits: Array(1..<bytes.count)) == frames)
        }
    }

    @Test func anOversizedLengthIsRefusedBeforeAnythingIsStored() throws {
        var decoder = FrameDecoder(limits: FrameLimits(maxFrameBytes: 1 << 20))
        // 0x7FFFFFFF bytes announced: refused once the four length bytes are in, and nothing buffered.
        #expect(try decoder.decode([0x7F, 0xFF]).isEmpty)
        #expect(throws: WireError.frameTooLarge(length: 0x7FFF_FFFF + 4, limit: 1 << 20)) {
            _ = try decoder.decode([0xFF, 0xFF])
        }
        #expect(decoder.bufferedBytes == 0)
        // Once failed, always failed: the stream cannot be re-synchronised.
        #expect(throws: WireError.self) { _ = try decoder.decode(try Frame(operation: .ping, requestID: 1, header: []).encoded()) }
    }

    /// The fixed part is checked field by field as its bytes arrive, and a frame's memory grows with the bytes that
    /// arrive, not with the length it declares.
    @Test func theFixedPartIsCheckedAsItArrivesAndMemoryFollowsTheBytes() throws {
        let good = try Frame(operation: .ping, requestID: 1, header: []).encoded()
        // A bad magic behind a 1 MiB length: refused at its fifth byte, with one byte at a time.
        var decoder = FrameDecoder(limits: FrameLimits(maxFrameBytes: 16 << 20))
        var bytes = good
        bytes[0...3] = [0, 0x10, 0, 0]
        bytes[4] = 0x42
        for i in 0..<4 { #expect(try decoder.decode([bytes[i]]).isEmpty) }
        #expect(throws: WireError.badMagic(found: 0x42)) { _ = try decoder.decode([bytes[4]]) }
        // Unknown flags: refused when the flags byte arrives, long before the declared body.
        var flagged = FrameDecoder(limits: FrameLimits(maxFrameBytes: 16 << 20))
        bytes = good
        bytes[0...3] = [0, 0xF0, 0, 0]
        bytes[8] = 0x80
        #expect(throws: WireError.self) { _ = try flagged.decode(Array(bytes[0..<9])) }
        // A valid fixed part declaring 15 MiB, then 1,000 bytes: 1,032 bytes held.
        var partial = FrameDecoder(limits: FrameLimits(maxFrameBytes: 16 << 20))
        bytes = good
        bytes[0...3] = [0, 0xF0, 0, 0]
        #expect(try partial.decode(Array(bytes[0..<32]) + [UInt8](repeating: 0, count: 1_000)).isEmpty)
        #expect(partial.bufferedBytes == 1_032)
    }

    @Test func fixedHeaderDamageIsNamed() throws {
        let good = try Frame(operation: .append, requestID: 7, header: [1, 2, 3], payload: [4, 5]).encoded()
        func error(_ mutate: (inout [UInt8]) -> Void) -> WireError? {
            var bytes = good
            mutate(&bytes)
            do {
                _ = try decodeAll(bytes, splits: [])
                return nil
            } catch { return error }
        }
        #expect(error { $0[4] = 0x42 } == .badMagic(found: 0x42))
        #expect(error { $0[5] = 2 } == .unsupportedVersion(2))
        #expect(error { $0[8] = 0x80 } == .unknownFlags(0x80))
        #expect(error { $0[10] = 1 } == .reservedNotZero(offset: 9))
        #expect(error { $0[3] = 10 } == .frameTooShort(length: 10))
        #expect(error { $0[23] = 200 } == .headerOutOfBounds(headerLength: 200, frameLength: good.count))
        guard case .checksumMismatch(7, _, _) = error({ $0[$0.count - 1] ^= 1 }) else {
            Issue.record("a flipped payload bit was not caught")
            return
        }
        guard case .checksumMismatch = error({ $0[33] ^= 0x40 }) else {
            Issue.record("a flipped header bit was not caught")
            return
        }
    }

    /// Random damage to valid frames: every result is a typed error, or a frame that re-encodes to exactly the
    /// bytes that produced it.
    @Test(arguments: 0..<100)
    func mutatedFramesAreRejectedOrReencodeIdentically(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed ^ 0x5EED)
        let original = try randomFrame(&rng).encoded()
        for _ in 0..<50 {
            var bytes = original
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { bytes.removeLast(Int.random(in: 0..<bytes.count, using: &rng)) }
            do {
                let frames = try decodeAll(bytes, splits: [Int.random(in: 0...bytes.count, using: &rng)],
                                           complete: false)
                #expect(try frames.flatMap { try $0.encoded() } == Array(bytes.prefix(frames.reduce(0) { $0 + $1.encodedSize })))
            } catch {
                _ = "\(error)"
            }
        }
    }

    @Test func protobufHeadersAndRawPayloadsTravelTogether() throws {
        let batch = try RecordBatch(streamID: 5, rangeIndex: 2, baseOffset: 100, baseTimestamp: 1000,
                                    records: [Record(timestamp: 1000, value: Array("v".utf8))]).encoded()
        var request = Elasticstream_V1_AppendRequest()
        request.streamID = 5
        request.rangeIndex = 2
        request.epoch = 9
        request.timeoutMs = 250
        let frame = try Frame(request: .append, id: 77, header: request, payload: batch)
        let decoded = try decodeAll(try frame.encoded(), splits: [])
        #expect(decoded.count == 1)
        let received = decoded[0]
        #expect(received.operation == .append)
        #expect(try received.header(as: Elasticstream_V1_AppendRequest.self) == request)
        // The payload is the batch, byte for byte, readable in place.
        try received.withPayload { payload in
            let view = try RecordBatchView(validating: payload)
            #expect(view.baseOffset == 100)
        }

        var answer = Elasticstream_V1_AppendResponse()
        answer.confirmedOffset = 101
        let response = try Frame(responseTo: received, header: answer)
        #expect(response.flags == [.response, .endOfStream])
        #expect(response.requestID == 77)
        #expect(try response.header(as: Elasticstream_V1_AppendResponse.self).confirmedOffset == 101)
    }

    @Test func notLeaderErrorsNameTheLeader() throws {
        let request = try Frame(request: .createStream, id: 3, header: Elasticstream_V1_CreateStreamRequest())
        var status = Status()
        status.code = .notLeader
        status.leaderID = 2
        status.leaderAddress = "127.0.0.1:2379"
        let error = Frame(errorTo: request, status: status)
        let decoded = try decodeAll(try error.encoded(), splits: [5])[0]
        #expect(decoded.flags.contains(.error))
        let back = try decoded.header(as: Status.self)
        #expect(back.code == .notLeader)
        #expect(back.leaderAddress == "127.0.0.1:2379")
        #expect(back.code.meaning.contains("leader"))
    }

    @Test func aHeaderThatIsNotTheExpectedMessageIsATypedError() throws {
        let frame = Frame(operation: .fetch, requestID: 11, header: [0xFF, 0xFF, 0xFF], payload: [])
        #expect(throws: WireError.self) { _ = try frame.header(as: Elasticstream_V1_FetchRequest.self) }
        do {
            _ = try frame.header(as: Elasticstream_V1_FetchRequest.self)
        } catch {
            #expect(error.description.contains("FETCH"))
            #expect(error.description.contains("11"))
        }
    }

    @Test func unknownOperationCodesStillDecode() throws {
        let frame = Frame(rawOperation: 0x7777, flags: [], requestID: 1, header: [], payload: [])
        let decoded = try decodeAll(try frame.encoded(), splits: [])[0]
        #expect(decoded.operation == nil)
        #expect(decoded.rawOperation == 0x7777)
    }

    @Test func everyOperationHasADistinctCodeAndName() {
        #expect(Set(OperationCode.allCases.map(\.rawValue)).count == OperationCode.allCases.count)
        #expect(Set(OperationCode.allCases.map(\.description)).count == OperationCode.allCases.count)
        #expect(OperationCode.allCases.count == 31)
    }

    @Test func framesOverTheLimitAreNotEncoded() {
        let frame = Frame(operation: .append, requestID: 1, header: [], payload: [UInt8](repeating: 0, count: 2000))
        #expect(throws: WireError.encodeTooLarge(bytes: 2032, limit: 1024)) {
            _ = try frame.encoded(limits: FrameLimits(maxFrameBytes: 1024, maxHeaderBytes: 100))
        }
    }
}

@Suite struct RangeRoutingTests {
    @Test func routingHashesTheTwelveLittleEndianBytes() {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(0x0102_0304_0506_0708).littleEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(9).littleEndian) { bytes += $0 }
        let expected = bytes.withUnsafeBytes { cs_xxh3_64($0.baseAddress, 12, 0) }
        #expect(RangeRouting.hash(streamID: 0x0102_0304_0506_0708, rangeIndex: 9) == expected)
        // Ranges spread over shards.
        let shards = Set((0..<64).map { RangeRouting.shard(streamID: 1, rangeIndex: UInt32($0), shardCount: 4) })
        #expect(shards == [0, 1, 2, 3])
    }
}
