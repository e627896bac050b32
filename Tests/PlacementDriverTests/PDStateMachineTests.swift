import PlacementDriver
import TestSupport
import Testing
import Wire

/// Applies commands in order, as Raft would, numbering them.
struct Applier {
    var machine = PDStateMachine(settings: .init(heartbeatTimeoutMilliseconds: 5_000))
    var index: UInt64 = 0
    var now: Int64 = 1_000_000

    mutating func run(_ operation: OperationCode, _ request: some SwiftProtobuf.Message) throws -> PDResult {
        index += 1
        return machine.apply(try PDCommand(operation, now: now, request: request), at: index)
    }

    mutating func createStream(replicas: UInt32 = 3, acks: UInt32 = 2) throws -> StreamRecord {
        var request = Elasticstream_V1_CreateStreamRequest()
        request.stream.replicaCount = replicas
        request.stream.ackCount = acks
        guard case .stream(let stream, _) = try run(.createStream, request) else { throw PDError(.unknown, "create") }
        return stream
    }

    mutating func open(_ id: UInt64, epoch: UInt64 = 0) throws -> PDResult {
        var request = Elasticstream_V1_OpenStreamRequest()
        request.streamID = id
        request.epoch = epoch
        return try run(.openStream, request)
    }

    mutating func register(_ id: UInt64 = 0, load: UInt64 = 0) throws -> UInt64 {
        var request = Elasticstream_V1_RegisterRangeServerRequest()
        request.server.serverID = id
        request.server.shardAddresses = ["127.0.0.1:\(20_000 + id)"]
        request.server.load.ranges = load
        guard case .serverID(let assigned) = try run(.registerRangeServer, request) else {
            throw PDError(.unknown, "register")
        }
        return assigned
    }

    mutating func heartbeat(_ id: UInt64, load: UInt64? = nil) throws -> PDResult {
        var request = Elasticstream_V1_RangeServerHeartbeatRequest()
        request.serverID = id
        if let load { request.load.ranges = load }
        return try run(.rangeServerHeartbeat, request)
    }

    mutating func createRange(_ stream: UInt64, index: UInt32, start: UInt64, epoch: UInt64, avoiding: [UInt64] = [])
        throws -> PDResult
    {
        var request = Elasticstream_V1_CreateRangeRequest()
        request.avoidServerIds = avoiding
        request.range.streamID = stream
        request.range.index = index
        request.range.startOffset = start
        request.epoch = epoch
        return try run(.pdCreateRange, request)
    }

    mutating func seal(_ stream: UInt64, index: UInt32, end: UInt64, epoch: UInt64) throws -> PDResult {
        var request = Elasticstream_V1_SealRangeRequest()
        request.range.streamID = stream
        request.range.index = index
        request.range.endOffset = end
        request.epoch = epoch
        return try run(.pdSealRange, request)
    }
}

import SwiftProtobuf

func code(_ result: PDResult) -> ErrorCode {
    if case .failed(let error) = result { return error.code }
    return .ok
}

@Suite struct PDStateMachineTests {
    @Test func streamsAreCreatedWithValidatedCountsAndIncreasingIDs() throws {
        var pd = Applier()
        let first = try pd.createStream()
        let second = try pd.createStream(replicas: 1, acks: 1)
        #expect(first.streamID == 1 && second.streamID == 2)
        #expect(first.replicaCount == 3 && first.ackCount == 2 && first.epoch == 0)
        var bad = Elasticstream_V1_CreateStreamRequest()
        bad.stream.replicaCount = 2
        bad.stream.ackCount = 3
        #expect(code(try pd.run(.createStream, bad)) == .invalidArgument)
        #expect(pd.machine.streams.count == 2, "a refused command changes nothing")
    }

    /// Opening bumps the epoch; every stream-changing call with an older epoch is fenced.
    @Test func openingFencesTheEarlierWriter() throws {
        var pd = Applier()
        for _ in 0..<3 { _ = try pd.register() }
        let stream = try pd.createStream()
        guard case .stream(let opened, _) = try pd.open(stream.streamID) else { Issue.record("open"); return }
        #expect(opened.epoch == 1)
        guard case .stream(let reopened, _) = try pd.open(stream.streamID) else { Issue.record("open"); return }
        #expect(reopened.epoch == 2)
        #expect(code(try pd.createRange(stream.streamID, index: 0, start: 0, epoch: 1)) == .epochFenced)
        #expect(code(try pd.createRange(stream.streamID, index: 0, start: 0, epoch: 2)) == .ok)
        #expect(code(try pd.seal(stream.streamID, index: 0, end: 10, epoch: 1)) == .epochFenced)
        var trim = Elasticstream_V1_TrimStreamRequest()
        trim.streamID = stream.streamID
        trim.epoch = 1
        trim.startOffset = 5
        #expect(code(try pd.run(.trimStream, trim)) == .epochFenced)
        var delete = Elasticstream_V1_DeleteStreamRequest()
        delete.streamID = stream.streamID
        delete.epoch = 2
        #expect(code(try pd.run(.deleteStream, delete)) == .ok)
        #expect(code(try pd.open(stream.streamID)) == .streamDeleted)
        #expect(code(try pd.open(99)) == .streamNotFound)
    }

    /// A range follows a sealed one at its end; sealing is idempotent at the same end and refused at another.
    @Test func rangesFollowEachOtherAndSealOnce() throws {
        var pd = Applier()
        for _ in 0..<3 { _ = try pd.register() }
        let stream = try pd.createStream()
        _ = try pd.open(stream.streamID)
        #expect(code(try pd.createRange(stream.streamID, index: 1, start: 0, epoch: 1)) == .invalidArgument)
        #expect(code(try pd.createRange(stream.streamID, index: 0, start: 0, epoch: 1)) == .ok)
        #expect(code(try pd.createRange(stream.streamID, index: 1, start: 0, epoch: 1)) == .previousRangeNotSealed)
        #expect(code(try pd.seal(stream.streamID, index: 0, end: 100, epoch: 1)) == .ok)
        #expect(code(try pd.seal(stream.streamID, index: 0, end: 100, epoch: 1)) == .ok)
        #expect(code(try pd.seal(stream.streamID, index: 0, end: 101, epoch: 1)) == .rangeEndMismatch)
        #expect(code(try pd.createRange(stream.streamID, index: 1, start: 99, epoch: 1)) == .invalidArgument)
        guard case .range(let next) = try pd.createRange(stream.streamID, index: 1, start: 100, epoch: 1) else {
            Issue.record("create")
            return
        }
        #expect(next.startOffset == 100 && !next.sealed && next.epoch == 1)
        #expect(try pd.machine.listRanges(stream: stream.streamID).map(\.index) == [0, 1])
    }

    /// Placement: distinct healthy servers, the least loaded first, servers the writer saw fail last, and a clear
    /// error when too few are healthy.
    @Test func placementChoosesHealthySpreadServers() throws {
        var pd = Applier()
        let a = try pd.register(load: 5)
        let b = try pd.register(load: 1)
        let c = try pd.register(load: 3)
        let d = try pd.register(load: 0)
        let stream = try pd.createStream()
        _ = try pd.open(stream.streamID)
        guard case .range(let first) = try pd.createRange(stream.streamID, index: 0, start: 0, epoch: 1) else {
            Issue.record("create")
            return
        }
        #expect(first.servers.map(\.serverID) == [d, b, c])
        _ = try pd.seal(stream.streamID, index: 0, end: 10, epoch: 1)
        // The writer saw b fail: with d still healthy, b is left out.
        guard case .range(let avoided) = try pd.createRange(stream.streamID, index: 1, start: 10, epoch: 1,
                                                            avoiding: [b]) else {
            Issue.record("create")
            return
        }
        #expect(avoided.servers.map(\.serverID) == [d, c, a])
        _ = try pd.seal(stream.streamID, index: 1, end: 10, epoch: 1)
        // Server d goes silent; only a, b and c are healthy, so an avoided one is still placed (last).
        pd.now += 6_000
        for id in [a, b, c] { _ = try pd.heartbeat(id) }
        guard case .range(let second) = try pd.createRange(stream.streamID, index: 2, start: 10, epoch: 1,
                                                           avoiding: [c]) else {
            Issue.record("create")
            return
        }
        #expect(second.servers.map(\.serverID) == [b, a, c])
        _ = try pd.seal(stream.streamID, index: 2, end: 20, epoch: 1)
        pd.now += 6_000
        _ = try pd.heartbeat(a)
        let result = try pd.createRange(stream.streamID, index: 3, start: 20, epoch: 1)
        guard case .failed(let error) = result else { Issue.record("placed on silent servers"); return }
        #expect(error.code == .notEnoughServers)
        #expect(error.message.contains("1 of 4 are healthy"), "\(error.message)")
        #expect(pd.machine.listServers(now: pd.now).filter { $0.state == .serverOffline }.count == 3)
        // Two healthy servers are enough for an ack count of 2: the range is placed on both, with less redundancy.
        _ = try pd.heartbeat(b)
        guard case .range(let degraded) = try pd.createRange(stream.streamID, index: 3, start: 20, epoch: 1) else {
            Issue.record("no degraded placement")
            return
        }
        #expect(degraded.servers.map(\.serverID) == [b, a])
        #expect(code(try pd.heartbeat(77)) == .serverNotFound)
    }

    @Test func idsAreAllocatedInBlocks() throws {
        var pd = Applier()
        var request = Elasticstream_V1_AllocateIdRequest()
        request.kind = .object
        request.count = 10
        guard case .firstID(let first) = try pd.run(.allocateID, request),
              case .firstID(let second) = try pd.run(.allocateID, request)
        else { Issue.record("allocate"); return }
        #expect(second == first + 10)
        request.count = 0
        #expect(code(try pd.run(.allocateID, request)) == .invalidArgument)
    }

    /// A snapshot restores a state that answers exactly as the original, and further commands apply the same on both.
    @Test func aSnapshotRestoresTheSameState() throws {
        var pd = Applier()
        for _ in 0..<3 { _ = try pd.register() }
        for _ in 0..<5 {
            let stream = try pd.createStream()
            _ = try pd.open(stream.streamID)
            _ = try pd.createRange(stream.streamID, index: 0, start: 0, epoch: 1)
        }
        _ = try pd.seal(2, index: 0, end: 42, epoch: 1)
        let bytes = try pd.machine.snapshot()
        var copy = pd
        copy.machine = try PDStateMachine(settings: .init(heartbeatTimeoutMilliseconds: 5_000), restoring: bytes)
        #expect(try copy.machine.snapshot() == bytes)
        #expect(copy.machine.streams == pd.machine.streams)
        #expect(copy.machine.ranges == pd.machine.ranges)
        _ = try pd.createRange(2, index: 1, start: 42, epoch: 1)
        _ = try copy.createRange(2, index: 1, start: 42, epoch: 1)
        #expect(try copy.machine.snapshot() == pd.machine.snapshot())
        #expect(throws: PDError.self) { try PDStateMachine(restoring: Array(bytes.dropLast(3))) }
    }

    @Test func watchersSeeChangesAfterARevision() throws {
        var pd = Applier()
        let stream = try pd.createStream()
        let revision = pd.index
        _ = try pd.open(stream.streamID)
        _ = try pd.register()
        let events = try pd.machine.events(after: revision)
        #expect(events.map(\.kind) == [.watchModified, .watchAdded])
        #expect(events.allSatisfy { $0.revision > revision })
    }

    /// A retried call (same client, same sequence) is answered with the first one's result and applied once, also
    /// after the state was restored from a snapshot; another sequence is a new call.
    @Test func aRetriedCallIsAppliedOnce() throws {
        var pd = Applier()
        var request = Elasticstream_V1_CreateStreamRequest()
        request.stream.replicaCount = 1
        request.stream.ackCount = 1
        func call(_ sequence: UInt64) -> PDResult {
            pd.index += 1
            return pd.machine.apply(try! PDCommand(.createStream, now: pd.now, request: request, clientID: 77,
                                                   sequence: sequence), at: pd.index)
        }
        guard case .stream(let first, _) = call(1), case .stream(let retried, _) = call(1) else {
            Issue.record("create")
            return
        }
        #expect(first.streamID == retried.streamID)
        #expect(pd.machine.streams.count == 1)
        guard case .stream(let second, _) = call(2) else { Issue.record("create"); return }
        #expect(second.streamID != first.streamID)
        pd.machine = try PDStateMachine(settings: .init(heartbeatTimeoutMilliseconds: 5_000),
                                        restoring: try pd.machine.snapshot())
        guard case .stream(let afterRestore, _) = call(2) else { Issue.record("create"); return }
        #expect(afterRestore.streamID == second.streamID)
        #expect(pd.machine.streams.count == 2)
        #expect(pd.machine.sessionCount == 1)
    }

    /// Past 10,000 clients, the least recently used one is forgotten first (a client used again stays), the same
    /// way after a snapshot is restored; a forgotten client's repeat is applied anew.
    @Test func theLeastRecentlyUsedClientIsForgottenFirst() throws {
        var pd = Applier()
        var request = Elasticstream_V1_CreateStreamRequest()
        request.stream.replicaCount = 1
        request.stream.ackCount = 1
        func call(_ client: UInt64) -> UInt64 {
            pd.index += 1
            guard case .stream(let stream, _) = pd.machine.apply(
                try! PDCommand(.createStream, now: pd.now, request: request, clientID: client, sequence: 1),
                at: pd.index) else { return 0 }
            return stream.streamID
        }
        let firstOfOne = call(1)
        let firstOfTwo = call(2)
        for client in UInt64(3)...10_000 { _ = call(client) }
        #expect(call(1) == firstOfOne, "a remembered repeat is answered from memory")
        // Client 1 was just used again: client 2 is now the oldest, and goes first.
        _ = call(10_001)
        #expect(pd.machine.sessionCount == 10_000)
        pd.machine = try PDStateMachine(settings: .init(heartbeatTimeoutMilliseconds: 5_000),
                                        restoring: try pd.machine.snapshot())
        #expect(call(1) == firstOfOne, "client 1 was forgotten instead of client 2")
        let again = call(2)
        #expect(again != firstOfTwo && again != 0, "client 2's repeat was answered from memory after eviction")
        #expect(pd.machine.sessionCount == 10_000)
    }

    /// Trimming past every sealed range keeps the last one: the next range still follows it (indexes are never
    /// reused, so a range server never sees an old range key again).
    @Test func trimmingEverythingKeepsRangeIndexesGoingUp() throws {
        var pd = Applier()
        for _ in 0..<3 { _ = try pd.register() }
        let stream = try pd.createStream()
        _ = try pd.open(stream.streamID)
        _ = try pd.createRange(stream.streamID, index: 0, start: 0, epoch: 1)
        _ = try pd.seal(stream.streamID, index: 0, end: 50, epoch: 1)
        var trim = Elasticstream_V1_TrimStreamRequest()
        trim.streamID = stream.streamID
        trim.epoch = 1
        trim.startOffset = 50
        #expect(code(try pd.run(.trimStream, trim)) == .ok)
        #expect(code(try pd.createRange(stream.streamID, index: 0, start: 50, epoch: 1)) == .invalidArgument)
        #expect(code(try pd.createRange(stream.streamID, index: 1, start: 50, epoch: 1)) == .ok)
    }

    /// A state restored from a snapshot has no history before it: a watcher asking for older changes is told
    /// REVISION_COMPACTED instead of getting a silently partial answer.
    @Test func watchHistoryBeforeASnapshotIsReportedCompacted() throws {
        var pd = Applier()
        _ = try pd.createStream()
        _ = try pd.createStream()
        let restored = try PDStateMachine(settings: .init(heartbeatTimeoutMilliseconds: 5_000),
                                          restoring: try pd.machine.snapshot())
        #expect(throws: PDError.self) { _ = try restored.events(after: 0) }
        #expect(try restored.events(after: restored.revision).isEmpty)
        #expect(try pd.machine.events(after: 0).count == 2)
    }

    @Test func commandsRoundTripThroughTheirEncoding() throws {
        var request = Elasticstream_V1_OpenStreamRequest()
        request.streamID = 9
        let command = try PDCommand(.openStream, now: -5, request: request, clientID: 3, sequence: 9)
        #expect(PDCommand(command.encoded()) == command)
        #expect(PDCommand([0xFF, 0xFF] + [UInt8](repeating: 0, count: 24)) == nil)
    }
}

@Suite struct RangePagingTests {
    /// Builds `streams` streams of `perStream` ranges each (all sealed but the last, two records each), placed on
    /// three of four servers.
    static func machine(streams: Int, perStream: Int) throws -> Applier {
        var pd = Applier()
        for _ in 0..<4 { _ = try pd.register() }
        for _ in 0..<streams {
            let stream = try pd.createStream()
            guard case .stream(let opened, _) = try pd.open(stream.streamID) else { throw PDError(.unknown, "open") }
            for index in 0..<UInt32(perStream) {
                let start = UInt64(index) * 2
                #expect(code(try pd.createRange(stream.streamID, index: index, start: start, epoch: opened.epoch)) == .ok)
                if index + 1 < perStream {
                    #expect(code(try pd.seal(stream.streamID, index: index, end: start + 2, epoch: opened.epoch)) == .ok)
                }
            }
        }
        return pd
    }

    /// Listing a stream a page at a time, and seeking to the range that holds an offset.
    @Test func aStreamsRangesComeInPagesAndFromAnOffset() throws {
        let pd = try Self.machine(streams: 1, perStream: 2_500)
        var all: [UInt32] = []
        var next: UInt32 = 0
        var pages = 0
        while true {
            let page = try pd.machine.listRanges(stream: 1, startIndex: next, startOffset: 0, limit: 1_000)
            all += page.ranges.map(\.index)
            pages += 1
            guard page.more, let last = page.ranges.last else { break }
            next = last.index + 1
        }
        #expect(pages == 3 && all == Array(0..<2_500))
        // Offset 1,001 lies in range 500 ([1,000, 1,002)).
        let seek = try pd.machine.listRanges(stream: 1, startIndex: 0, startOffset: 1_001, limit: 10)
        #expect(seek.ranges.first?.index == 500 && seek.ranges.count == 10 && seek.more)
        // At the end of the stream (its last, open range holds every offset from 4,998 on).
        let end = try pd.machine.listRanges(stream: 1, startIndex: 0, startOffset: 1_000_000, limit: 10)
        #expect(end.ranges.map(\.index) == [2_499] && !end.more)
        // Opening the stream answers its last range only, however many it has.
        var copy = pd
        guard case .stream(_, let ranges) = try copy.open(1) else { throw PDError(.unknown, "open") }
        #expect(ranges.map(\.index) == [2_499])
    }

    /// Listing a server's ranges a page at a time over 100,000 ranges gives each exactly once, in order.
    @Test func aServersRangesComeInPagesWithoutGapsOrRepeats() throws {
        let pd = try Self.machine(streams: 40, perStream: 2_500)
        var listed = 0
        for server in UInt64(1)...4 {
            var seen = 0
            var previous: (UInt64, UInt32)?
            var start: (UInt64, UInt32) = (0, 0)
            var expected = 0
            for ranges in pd.machine.ranges.values {
                expected += ranges.filter { $0.servers.contains { $0.serverID == server } }.count
            }
            while true {
                let page = pd.machine.listRanges(server: server, startStream: start.0, startIndex: start.1, limit: 5_000)
                for range in page.ranges {
                    #expect(range.servers.contains { $0.serverID == server })
                    if let previous { #expect(previous < (range.streamID, range.index)) }
                    previous = (range.streamID, range.index)
                }
                seen += page.ranges.count
                guard page.more, let last = page.ranges.last else { break }
                start = (last.streamID, last.index + 1)
            }
            #expect(seen == expected, "server \(server): \(seen) of \(expected)")
            listed += seen
        }
        #expect(listed == 3 * 100_000, "\(listed) replicas listed of 300,000")
    }
}

/// Commands whose numbers would overflow are refused with INVALID_ARGUMENT naming the field, by the state machine
/// itself: applying a committed entry never traps, whatever a client put in it.
@Suite struct PDStateMachineBoundsTests {
    @Test func overflowingCommandsAreRefusedByName() throws {
        var pd = Applier()
        for id in 1...3 { _ = try pd.register(UInt64(id)) }
        let stream = try pd.createStream()
        for epoch in [UInt64.max, UInt64.max - 1, WireBounds.maxEpoch] {
            let result = try pd.open(stream.streamID, epoch: epoch)
            guard case .failed(let error) = result else {
                Issue.record("epoch \(epoch) was accepted: \(result)")
                continue
            }
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("epoch"), "\(error.message)")
        }
        // The largest epoch a request may carry still works: the stream's epoch becomes the bound itself.
        guard case .stream(let opened, _) = try pd.open(stream.streamID, epoch: WireBounds.maxEpoch - 1) else {
            Issue.record("the largest allowed epoch was refused")
            return
        }
        #expect(opened.epoch == WireBounds.maxEpoch)
        // Now no writer can take it, and that is an answer, not a trap.
        #expect(code(try pd.open(stream.streamID)) == .invalidArgument)

        var register = Elasticstream_V1_RegisterRangeServerRequest()
        register.server.serverID = UInt64.max
        register.server.shardAddresses = ["127.0.0.1:1"]
        #expect(code(try pd.run(.registerRangeServer, register)) == .invalidArgument)
        register.server.serverID = 9
        register.server.shardAddresses = ["no port here"]
        #expect(code(try pd.run(.registerRangeServer, register)) == .invalidArgument)

        let other = try pd.createStream()
        guard case .stream(let writer, _) = try pd.open(other.streamID) else { throw PDError(.unknown, "open") }
        #expect(code(try pd.createRange(other.streamID, index: 0, start: UInt64.max, epoch: writer.epoch)) == .invalidArgument)
        #expect(code(try pd.createRange(other.streamID, index: UInt32.max, start: 0, epoch: writer.epoch)) == .invalidArgument)
        #expect(code(try pd.createRange(other.streamID, index: 0, start: 0, epoch: writer.epoch)) == .ok)
        #expect(code(try pd.seal(other.streamID, index: 0, end: UInt64.max, epoch: writer.epoch)) == .invalidArgument)
        var trim = Elasticstream_V1_TrimStreamRequest()
        trim.streamID = other.streamID
        trim.epoch = writer.epoch
        trim.startOffset = UInt64.max
        #expect(code(try pd.run(.trimStream, trim)) == .invalidArgument)
        var create = Elasticstream_V1_CreateStreamRequest()
        create.stream.retentionMs = UInt64.max
        #expect(code(try pd.run(.createStream, create)) == .invalidArgument)
        // Undecodable bytes are a refusal too.
        pd.index += 1
        let garbage = pd.machine.apply(PDCommand(operation: .openStream, now: pd.now, request: [0xFF, 0xFF, 0xFF]),
                                       at: pd.index)
        #expect(code(garbage) == .badRequest)
    }

    @Test func idsRunOutWithAnAnswerNotATrap() throws {
        var pd = Applier()
        var largest = Elasticstream_V1_RegisterRangeServerRequest()
        largest.server.serverID = WireBounds.maxID
        largest.server.shardAddresses = ["127.0.0.1:1"]
        guard case .serverID(let id) = try pd.run(.registerRangeServer, largest) else {
            Issue.record("the largest server id was refused")
            return
        }
        #expect(id == WireBounds.maxID)
        var allocate = Elasticstream_V1_AllocateIdRequest()
        allocate.kind = .rangeServer
        allocate.count = 1
        #expect(code(try pd.run(.allocateID, allocate)) == .invalidArgument)
        var register = Elasticstream_V1_RegisterRangeServerRequest()
        register.server.shardAddresses = ["127.0.0.1:1"]
        #expect(code(try pd.run(.registerRangeServer, register)) == .invalidArgument)
    }
}
