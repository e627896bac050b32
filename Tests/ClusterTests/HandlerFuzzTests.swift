import Foundation
@testable import PlacementDriver
import Platform
import Raft
@testable import RangeServer
import Reactor
import Records
import Store
import SwiftProtobuf
import TestSupport
import Testing
import Transport
import Wire

/// Structure-aware fuzzing of the request handlers: well-formed frames whose protobuf headers carry extreme values in
/// every numeric field (0, 1, the bounds of `WireBounds` and around them, 2^64 - 1, random), record batches with
/// valid checksums at extreme offsets and timestamps, and some headers with a few bytes mutated, fed straight into a
/// range server shard's request handling (its real store on disk) and a placement driver member's (its real Raft log
/// and state machine). Property: no trap, and every answer is a success or an error whose code is one the protocol
/// documents for that server (docs/protocol.md), with a message.
///
/// Seeded and reproducible: `ES_FUZZ_SEED` picks the seed (a random one is printed otherwise), `ES_FUZZ_ITERATIONS`
/// the number of requests per server (default 3000). `Tests/Fuzz/run.sh handlers` runs it long. A crash found here
/// becomes a case in `HostileInputTests` or in the unit tests of the layer that trapped.
@Suite(.serialized) struct HandlerFuzzTests {
    static var iterations: Int { Int(ProcessInfo.processInfo.environment["ES_FUZZ_ITERATIONS"] ?? "") ?? 3_000 }
    static var seed: UInt64 {
        if let text = ProcessInfo.processInfo.environment["ES_FUZZ_SEED"], let seed = UInt64(text) { return seed }
        return UInt64.random(in: 1...UInt64(UInt32.max))
    }

    /// Codes any server may answer, and those of each server (docs/protocol.md, "Error codes").
    static let common: Set<ErrorCode> = [.ok, .badRequest, .unsupportedOperation, .checksumMismatch, .tooManyRequests,
                                         .timeout, .shuttingDown, .invalidArgument]
    static let rangeServer: Set<ErrorCode> = common.union([
        .rangeNotFound, .rangeSealed, .rangeAlreadyExists, .appendPending, .appendOvertaken, .offsetOutOfRange,
        .epochFenced, .rangeEndMismatch, .storageFull, .storageFailed, .dataCorrupted])
    static let placementDriver: Set<ErrorCode> = common.union([
        .streamNotFound, .streamDeleted, .epochFenced, .previousRangeNotSealed, .rangeEndMismatch, .notEnoughServers,
        .notLeader, .noLeader, .serverNotFound, .objectConflict, .revisionCompacted, .offsetOutOfRange,
        .rangeNotFound])

    @Test func rangeServerHandlersAnswerEveryRequest() async throws {
        let seed = Self.seed
        let iterations = Self.iterations
        print("HandlerFuzzTests range server: ES_FUZZ_SEED=\(seed) ES_FUZZ_ITERATIONS=\(iterations)")
        let directory = try makeTemporaryDirectory("es-fuzz")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        let problems = try await reactor.run(on: 0) { context -> [String] in
            var configuration = RangeServerConfiguration()
            configuration.dataDirectory = directory
            configuration.segmentBytes = 8 << 20
            configuration.cacheBytes = 4 << 20
            configuration.maxFetchWait = .milliseconds(5)
            let store = try await ShardStore.open(configuration.store(shard: 0), on: context)
            let listener = try context.listen(host: "127.0.0.1", port: 0)
            let fences = try await FenceTable.load(path: "\(directory)/fences-0", context: context)
            let service = ShardService(index: 0, context: context, store: store, listener: listener,
                                       configuration: configuration, fences: fences)
            var generator = RequestGenerator(seed: seed)
            var problems: [String] = []
            var seen: [String: Int] = [:]
            for i in 0..<iterations {
                let frame = generator.rangeServerRequest(id: UInt64(i + 1))
                let answer = await service.respond(to: frame)
                seen[Self.outcome(answer, to: frame), default: 0] += 1
                if let problem = Self.check(answer, to: frame, allowed: Self.rangeServer) {
                    problems.append("request \(i) of seed \(seed): \(problem)")
                    if problems.count >= 10 { break }
                }
            }
            await service.stop()
            print("HandlerFuzzTests range server answers: \(seen.sorted { $0.key < $1.key })")
            // The generator reaches the store, not only the checks in front of it.
            for reached in ["APPEND ok", "FETCH ok", "CREATE_RANGE ok", "SEAL_RANGE ok"] where iterations >= 1_000 {
                if seen[reached, default: 0] == 0 { problems.append("no request got '\(reached)'") }
            }
            return problems
        }
        #expect(problems.isEmpty, "\(problems)")
    }

    @Test func placementDriverHandlersAnswerEveryRequest() async throws {
        let seed = Self.seed
        let iterations = Self.iterations
        print("HandlerFuzzTests placement driver: ES_FUZZ_SEED=\(seed) ES_FUZZ_ITERATIONS=\(iterations)")
        let directory = try makeTemporaryDirectory("es-fuzz-pd")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let problems = try await reactor.run(on: 0) { context -> [String] in
                let settings = PDMember.Settings(
                    id: 1, initialVoters: [1], directory: directory, tick: .milliseconds(5),
                    raft: RaftConfiguration(electionTicks: 4, heartbeatTicks: 1), snapshotEvery: 500)
                let member = try await PDMember.start(settings, on: context)
                for _ in 0..<400 where !member.isLeader { try await context.sleep(for: .milliseconds(5)) }
                // Ports below Linux's ephemeral range, apart from the other tests' (which do not run at once).
                let base = UInt16(30_000 + Int(getpid() % 1_000) * 2)
                let server = try PDServer.start(member: member, members: [1: MemberAddress(
                    id: 1, host: "127.0.0.1", port: base, peerPort: base + 1)], on: context)
                var generator = RequestGenerator(seed: seed)
                var problems: [String] = []
                var seen: [String: Int] = [:]
                for i in 0..<iterations {
                    let frame = generator.placementDriverRequest(id: UInt64(i + 1))
                    let answer = await server.respond(to: frame)
                    seen[Self.outcome(answer, to: frame), default: 0] += 1
                    if let problem = Self.check(answer, to: frame, allowed: Self.placementDriver) {
                        problems.append("request \(i) of seed \(seed): \(problem)")
                        if problems.count >= 10 { break }
                    }
                }
                print("HandlerFuzzTests placement driver answers: \(seen.sorted { $0.key < $1.key })")
                for reached in ["CREATE_STREAM ok", "OPEN_STREAM ok", "REGISTER_RANGE_SERVER ok"]
                    where iterations >= 1_000 {
                    if seen[reached, default: 0] == 0 { problems.append("no request got '\(reached)'") }
                }
                // Every command the member applied survives a restart: replaying its log traps on none.
                await server.stop()
                await member.stop()
                let again = try await PDMember.start(settings, on: context)
                for _ in 0..<400 where !again.isLeader { try await context.sleep(for: .milliseconds(5)) }
                _ = try await again.read { $0.streams.count }
                await again.stop()
                return problems
            }
            #expect(problems.isEmpty, "\(problems)")
        }
    }

    /// "OPERATION code", for the tally of what the run reached.
    static func outcome(_ answer: Frame, to request: Frame) -> String {
        let name = request.operation.map { "\($0)" } ?? "0x\(String(request.rawOperation, radix: 16))"
        guard answer.flags.contains(.error) else { return "\(name) ok" }
        return "\(name) \((try? answer.header(as: Status.self))?.code ?? .unknown)"
    }

    /// What is wrong with `answer` to `request`, if anything.
    static func check(_ answer: Frame, to request: Frame, allowed: Set<ErrorCode>) -> String? {
        let name = request.operation.map { "\($0)" } ?? "0x\(String(request.rawOperation, radix: 16))"
        guard answer.isResponse, answer.requestID == request.requestID, answer.rawOperation == request.rawOperation else {
            return "\(name): the answer is not a response to the request"
        }
        guard answer.flags.contains(.error) else { return nil }
        guard let status = try? answer.header(as: Status.self) else { return "\(name): an error without a status" }
        guard allowed.contains(status.code) else { return "\(name): undocumented code \(status.code): \(status.message)" }
        guard !status.message.isEmpty else { return "\(name): \(status.code) without a message" }
        return nil
    }
}

/// Requests of every operation with extreme numbers, from one seed.
struct RequestGenerator {
    var random: SeededGenerator
    /// Streams and ranges the generator has asked to create, so that later requests reach them.
    var streams: [UInt64] = [1, 2]

    init(seed: UInt64) { random = SeededGenerator(seed: seed) }

    mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &random) < percent }

    mutating func u64() -> UInt64 {
        let max = WireBounds.maxOffset
        let picks: [UInt64] = [0, 1, 2, 3, 5, 100, max - 4, max - 1, max, max + 1, UInt64.max - 4, UInt64.max - 1,
                               UInt64.max, UInt64(UInt32.max), UInt64(UInt32.max) + 1]
        return chance(80) ? picks.randomElement(using: &random)! : UInt64.random(in: 0...UInt64.max, using: &random)
    }

    mutating func u32() -> UInt32 {
        let picks: [UInt32] = [0, 1, 2, 3, 16, 17, 1 << 20, (1 << 20) + 1, UInt32.max - 1, UInt32.max]
        return chance(80) ? picks.randomElement(using: &random)! : UInt32.random(in: 0...UInt32.max, using: &random)
    }

    mutating func i64() -> Int64 {
        let picks: [Int64] = [0, 1, -1, Int64.max, Int64.max - 1, Int64.min, Int64.min + 1, 1_700_000_000_000]
        return picks.randomElement(using: &random)!
    }

    mutating func stream() -> UInt64 { chance(70) ? streams.randomElement(using: &random)! : u64() }
    mutating func index() -> UInt32 { chance(70) ? UInt32.random(in: 0...2, using: &random) : u32() }
    mutating func offset() -> UInt64 { chance(50) ? UInt64.random(in: 0...40, using: &random) : u64() }

    mutating func range() -> Elasticstream_V1_Range {
        var range = Elasticstream_V1_Range()
        range.streamID = stream()
        range.index = index()
        range.startOffset = offset()
        range.endOffset = offset()
        range.sealed = chance(50)
        range.epoch = u64()
        range.replicaCount = u32()
        range.ackCount = u32()
        if chance(30) {
            var server = Elasticstream_V1_RangeServer()
            server.serverID = u64()
            server.shardAddresses = chance(50) ? ["127.0.0.1:1"] : ["", "x:y", String(repeating: "a", count: 300)]
            range.servers = [server]
        }
        return range
    }

    /// Record batches with valid checksums (or, sometimes, bytes that are not one).
    mutating func batches(stream: UInt64, index: UInt32) -> [UInt8] {
        if chance(10) { return (0..<Int.random(in: 0...200, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) } }
        var payload: [UInt8] = []
        for _ in 0..<(chance(80) ? 1 : 3) {
            let count = Int.random(in: 1...5, using: &random)
            let base = offset()
            let timestamp = i64()
            let records = (0..<count).map { _ in
                Record(timestamp: chance(80) ? timestamp : timestamp &+ Int64.random(in: 0...1000, using: &random),
                       headers: chance(20) ? [Header("k", "v")] : [], value: [UInt8](repeating: 7, count: Int.random(in: 0...64, using: &random)))
            }
            let batch = RecordBatch(streamID: chance(90) ? stream : u64(), rangeIndex: chance(90) ? index : u32(),
                                    baseOffset: base, baseTimestamp: records.map(\.timestamp).min()!, records: records)
            if let bytes = try? batch.encoded() { payload += bytes }
        }
        return payload
    }

    /// A header with a few bytes changed (structure kept mostly; decoding may fail).
    mutating func mutate(_ header: [UInt8]) -> [UInt8] {
        guard chance(10), !header.isEmpty else { return header }
        var bytes = header
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
        }
        return bytes
    }

    mutating func frame(_ operation: UInt16, id: UInt64, _ message: some SwiftProtobuf.Message, payload: [UInt8] = [])
        -> Frame
    {
        let header = (try? message.serializedBytes() as [UInt8]) ?? []
        return Frame(rawOperation: operation, flags: [], requestID: id, header: mutate(header), payload: payload)
    }

    mutating func rangeServerRequest(id: UInt64) -> Frame {
        switch Int.random(in: 0..<100, using: &random) {
        case 0..<35:
            var request = Elasticstream_V1_AppendRequest()
            request.streamID = stream()
            request.rangeIndex = index()
            request.epoch = chance(80) ? 0 : u64()
            request.acknowledgedOffset = chance(50) ? 0 : offset()
            request.timeoutMs = u32()
            let payload = chance(90) ? batches(stream: request.streamID, index: request.rangeIndex) : []
            return frame(OperationCode.append.rawValue, id: id, request, payload: payload)
        case 35..<55:
            var request = Elasticstream_V1_FetchRequest()
            request.streamID = stream()
            request.rangeIndex = index()
            request.startOffset = offset()
            request.endOffset = chance(50) ? 0 : offset()
            request.maxBytes = u32()
            request.minBytes = u32()
            request.maxWaitMs = chance(80) ? 0 : u32()
            request.committedOnly = chance(50)
            return frame(OperationCode.fetch.rawValue, id: id, request)
        case 55..<72:
            var request = Elasticstream_V1_CreateRangeRequest()
            request.range = range()
            if chance(60) { request.range.startOffset = UInt64.random(in: 0...10, using: &random) }
            request.epoch = chance(80) ? 0 : u64()
            return frame(OperationCode.createRange.rawValue, id: id, request)
        case 72..<85:
            var request = Elasticstream_V1_SealRangeRequest()
            request.range = range()
            request.epoch = chance(80) ? 0 : u64()
            return frame(OperationCode.sealRange.rawValue, id: id, request)
        case 85..<92:
            var request = Elasticstream_V1_DescribeRangeRequest()
            request.streamID = stream()
            request.rangeIndex = index()
            return frame(OperationCode.describeRange.rawValue, id: id, request)
        default:
            let codes = OperationCode.allCases.map(\.rawValue) + [0, 0x7777, UInt16.max]
            return frame(codes.randomElement(using: &random)!, id: id, Elasticstream_V1_PingRequest(),
                         payload: chance(50) ? [] : [1, 2, 3])
        }
    }

    mutating func placementDriverRequest(id: UInt64) -> Frame {
        var payload: [UInt8] = []
        if chance(30) { payload = (0..<16).map { _ in UInt8.random(in: 0...3, using: &random) } }
        switch Int.random(in: 0..<100, using: &random) {
        case 0..<10:
            var request = Elasticstream_V1_CreateStreamRequest()
            request.stream.replicaCount = chance(70) ? UInt32.random(in: 0...3, using: &random) : u32()
            request.stream.ackCount = chance(70) ? UInt32.random(in: 0...3, using: &random) : u32()
            request.stream.retentionMs = u64()
            request.stream.startOffset = u64()
            request.stream.epoch = u64()
            streams.append(UInt64(streams.count + 1))
            return frame(OperationCode.createStream.rawValue, id: id, request, payload: payload)
        case 10..<22:
            var request = Elasticstream_V1_OpenStreamRequest()
            request.streamID = stream()
            request.epoch = chance(50) ? UInt64.random(in: 0...5, using: &random) : u64()
            return frame(OperationCode.openStream.rawValue, id: id, request, payload: payload)
        case 22..<27:
            var request = Elasticstream_V1_UpdateStreamRequest()
            request.streamID = stream()
            request.epoch = UInt64.random(in: 0...5, using: &random)
            if chance(50) { request.replicaCount = u32() }
            if chance(50) { request.ackCount = u32() }
            if chance(50) { request.retentionMs = u64() }
            return frame(OperationCode.updateStream.rawValue, id: id, request, payload: payload)
        case 27..<32:
            var request = Elasticstream_V1_TrimStreamRequest()
            request.streamID = stream()
            request.epoch = UInt64.random(in: 0...5, using: &random)
            request.startOffset = offset()
            return frame(OperationCode.trimStream.rawValue, id: id, request, payload: payload)
        case 32..<34:
            var request = Elasticstream_V1_DeleteStreamRequest()
            request.streamID = stream()
            request.epoch = UInt64.random(in: 0...5, using: &random)
            return frame(OperationCode.deleteStream.rawValue, id: id, request, payload: payload)
        case 34..<46:
            var request = Elasticstream_V1_CreateRangeRequest()
            request.range = range()
            request.epoch = UInt64.random(in: 0...5, using: &random)
            request.avoidServerIds = chance(80) ? [] : (0..<Int.random(in: 1...100, using: &random)).map { _ in u64() }
            return frame(OperationCode.pdCreateRange.rawValue, id: id, request, payload: payload)
        case 46..<54:
            var request = Elasticstream_V1_SealRangeRequest()
            request.range = range()
            request.epoch = UInt64.random(in: 0...5, using: &random)
            return frame(OperationCode.pdSealRange.rawValue, id: id, request, payload: payload)
        case 54..<62:
            var request = Elasticstream_V1_RegisterRangeServerRequest()
            request.server.serverID = chance(50) ? UInt64.random(in: 0...4, using: &random) : u64()
            request.server.shardAddresses = chance(70) ? ["127.0.0.1:\(Int.random(in: 1...65535, using: &random))"]
                : ["", "host", "a:b:c", String(repeating: "x", count: 400)]
            request.server.lastHeartbeatMs = i64()
            return frame(OperationCode.registerRangeServer.rawValue, id: id, request, payload: payload)
        case 62..<68:
            var request = Elasticstream_V1_RangeServerHeartbeatRequest()
            request.serverID = chance(50) ? UInt64.random(in: 0...4, using: &random) : u64()
            request.load.ranges = u64()
            request.load.appendBytesPerSecond = u64()
            request.state = Elasticstream_V1_ServerState(rawValue: Int(u32() % 6)) ?? .unspecified
            return frame(OperationCode.rangeServerHeartbeat.rawValue, id: id, request, payload: payload)
        case 68..<72:
            var request = Elasticstream_V1_AllocateIdRequest()
            request.kind = Elasticstream_V1_IdKind(rawValue: Int(u32() % 5)) ?? .stream
            request.count = u32()
            return frame(OperationCode.allocateID.rawValue, id: id, request, payload: payload)
        case 72..<76:
            var request = Elasticstream_V1_CommitObjectRequest()
            request.object.streamID = stream()
            request.object.startOffset = offset()
            request.object.endOffset = offset()
            request.object.objectID = u64()
            request.object.sizeBytes = u64()
            return frame(OperationCode.commitObject.rawValue, id: id, request, payload: payload)
        case 76..<84:
            var request = Elasticstream_V1_ListRangesRequest()
            if chance(50) { request.streamID = stream() } else if chance(80) { request.serverID = u64() }
            request.startIndex = u32()
            request.startOffset = u64()
            request.limit = u32()
            request.startStreamID = u64()
            return frame(OperationCode.listRanges.rawValue, id: id, request)
        case 84..<88:
            var request = Elasticstream_V1_ListStreamsRequest()
            request.afterStreamID = u64()
            request.limit = u32()
            return frame(OperationCode.listStreams.rawValue, id: id, request)
        case 88..<91:
            var request = Elasticstream_V1_ListObjectsRequest()
            request.streamID = stream()
            request.startOffset = u64()
            request.endOffset = u64()
            return frame(OperationCode.listObjects.rawValue, id: id, request)
        case 91..<94:
            var request = Elasticstream_V1_WatchRequest()
            request.afterRevision = u64()
            return frame(OperationCode.watch.rawValue, id: id, request)
        case 94..<96:
            var request = Elasticstream_V1_DescribeStreamRequest()
            request.streamID = stream()
            return frame(OperationCode.describeStream.rawValue, id: id, request)
        default:
            let codes = OperationCode.allCases.map(\.rawValue) + [0, 0x7777, UInt16.max]
            return frame(codes.randomElement(using: &random)!, id: id, Elasticstream_V1_PingRequest(),
                         payload: chance(50) ? [] : [1, 2, 3])
        }
    }
}
