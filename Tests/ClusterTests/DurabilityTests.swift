import Client
import Foundation
import PlacementDriver
import Reactor
import Records
import TestSupport
import Testing
import Transport
import Wire

/// What writers had acknowledged (offset → record number), and the numbers of records whose append failed (they
/// may or may not be in the stream, at most once). Shared between the writing shard and the test.
final class AckLog: @unchecked Sendable {
    private let lock = NSLock()
    private var acknowledged: [UInt64: Int] = [:]
    private var failed: Set<Int> = []
    private var stopping = false

    func ack(_ offset: UInt64, _ numbers: Range<Int>) {
        lock.withLock { for (i, n) in numbers.enumerated() { acknowledged[offset + UInt64(i)] = n } }
    }
    func fail(_ numbers: Range<Int>) { lock.withLock { failed.formUnion(numbers) } }
    var count: Int { lock.withLock { acknowledged.count } }
    var stopped: Bool { lock.withLock { stopping } }
    func stop() { lock.withLock { stopping = true } }
    var snapshot: (acknowledged: [UInt64: Int], failed: Set<Int>) { lock.withLock { (acknowledged, failed) } }
}

/// Checks a stream read from offset 0 against what was acknowledged: offsets contiguous, every acknowledged record
/// at its offset exactly once, byte for byte; nothing else but records of failed appends, each at most once.
func verify(_ records: [ReadRecord], against log: AckLog) -> [String] {
    let (acknowledged, failed) = log.snapshot
    var problems: [String] = []
    var seen: Set<Int> = []
    for (i, read) in records.enumerated() {
        if read.offset != UInt64(i) { problems.append("offset \(read.offset) at position \(i)") }
        guard let n = number(read.record) else {
            problems.append("offset \(read.offset): a record nobody wrote")
            continue
        }
        if read.record.value != record(n).value { problems.append("offset \(read.offset): record \(n) altered") }
        if !seen.insert(n).inserted { problems.append("record \(n) appears twice") }
        if let expected = acknowledged[read.offset] {
            if expected != n { problems.append("offset \(read.offset) holds \(n), acknowledged \(expected)") }
        } else if !failed.contains(n) {
            problems.append("offset \(read.offset) holds \(n), which was never appended there")
        }
    }
    let end = UInt64(records.count)
    let lost = acknowledged.keys.filter { $0 >= end }
    if !lost.isEmpty { problems.append("\(lost.count) acknowledged records lost, from offset \(lost.min()!)") }
    return problems
}

@Suite(.serialized) struct DurabilityTests {
    /// Readers other than the writer see an open range up to the writer's acknowledged end. That end is recorded
    /// durably by the replicas, so after every replica is killed and restarted (the writer idle, not closed, and
    /// not repeating it) a reader sees exactly as much as before.
    @Test func committedReadsSeeAsMuchAfterTheReplicasRestart() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()), "build the server first: \(serverPath())")
        let cluster = try NodeCluster(writerLease: "60s")
        try cluster.startAll()
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        var configuration = ClientConfiguration()
        // The writer tells its acknowledged end once, shortly after it goes idle, and never again.
        configuration.keepaliveInterval = .seconds(3600)
        let writing = try await withClient(reactor, cluster, configuration: configuration) { box -> Box<(StreamWriter, UInt64, Int)> in
            let client = box.value
            try await waitForServers(client, 3)
            let stream = try await client.createStream(replicas: 3, ackCount: 2).streamID
            let writer = try await client.openStream(stream)
            for n in 0..<11 { _ = try await writer.append([record(n)]) }
            // Until the idle notice has reached the replicas, a reader sees less.
            var before = 0
            let deadline = ContinuousClock.now + .seconds(20)
            while before < 11 && ContinuousClock.now < deadline {
                before = try await client.read(stream: stream, from: 0).count
                if before < 11 { try await client.context.sleep(for: .milliseconds(20)) }
            }
            return Box((writer, stream, before))
        }
        let (_, stream, before) = writing.value
        #expect(before == 11, "a reader saw \(before) of 11 acknowledged records before the restart")
        for node in 1...3 { cluster.kill(node) }
        try cluster.startAll()
        let after = try await withClient(reactor, cluster) { box -> Int in
            let client = box.value
            try await waitForServers(client, 3)
            return try await client.read(stream: stream, from: 0).count
        }
        withExtendedLifetime(writing) {}  // the writer was never closed
        #expect(after == before, "a reader saw \(before) records before the replicas restarted, \(after) after")
    }

    /// A writer that goes silent without closing (its process died) leaves its range open. The range servers seal
    /// it once the writer's lease lapses on every replica, at the end its replicas confirm: a reader of the stream
    /// then sees every acknowledged record, the placement driver lists the range sealed, and the silent writer, if
    /// it comes back, is fenced.
    @Test func theServersSealARangeWhoseWriterIsGone() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()), "build the server first: \(serverPath())")
        let cluster = try NodeCluster(writerLease: "2s")
        try cluster.startAll()
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        var configuration = ClientConfiguration()
        configuration.keepaliveInterval = .seconds(3600)
        let (sealed, read, late) = try await withClient(reactor, cluster, configuration: configuration) {
            box -> (RangeRecord?, Int, ClientError?) in
            let client = box.value
            try await waitForServers(client, 3)
            let stream = try await client.createStream(replicas: 3, ackCount: 2).streamID
            let writer = try await client.openStream(stream)
            for n in 0..<20 { _ = try await writer.append([record(n)]) }
            let index = writer.ranges.last!.index
            var sealed: RangeRecord?
            let deadline = ContinuousClock.now + .seconds(60)
            while sealed == nil && ContinuousClock.now < deadline {
                sealed = try await client.ranges(of: stream).first { $0.index == index && $0.sealed }
                if sealed == nil { try await client.context.sleep(for: .milliseconds(200)) }
            }
            let read = try await client.read(stream: stream, from: 0).count
            var late: ClientError?
            do { _ = try await writer.append([record(20)]) } catch let error as ClientError { late = error }
            return (sealed, read, late)
        }
        #expect(sealed?.endOffset == 20, "the range was not sealed at 20: \(String(describing: sealed))")
        #expect(read == 20, "a reader saw \(read) of 20 acknowledged records")
        if case .fenced = late {} else { Issue.record("the silent writer was not fenced: \(String(describing: late))") }
    }

    /// A tail keeps up across a range whose writer went silent (sealed by the servers) into the next writer's range:
    /// it yields every acknowledged record, in order, once.
    @Test func aTailFollowsPastARangeWhoseWriterIsGone() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()), "build the server first: \(serverPath())")
        let cluster = try NodeCluster(writerLease: "2s")
        try cluster.startAll()
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        var configuration = ClientConfiguration()
        configuration.keepaliveInterval = .seconds(3600)
        let tailed = try await withClient(reactor, cluster, configuration: configuration) { box -> [UInt64] in
            let client = box.value
            try await waitForServers(client, 3)
            let stream = try await client.createStream(replicas: 3, ackCount: 2).streamID
            let tail = client.context.spawn { () -> [UInt64] in
                var seen: [UInt64] = []
                for try await record in box.value.tail(stream: stream, from: 0) {
                    #expect(number(record.record) == Int(record.offset))
                    seen.append(record.offset)
                    if seen.count == 20 { break }
                }
                return seen
            }
            let silent = try await client.openStream(stream)
            for n in 0..<10 { _ = try await silent.append([record(n)]) }
            // The first writer goes silent; once the servers sealed its range, a second writer goes on.
            let index = silent.ranges.last!.index
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline,
                  try await client.ranges(of: stream).first(where: { $0.index == index })?.sealed != true {
                try await client.context.sleep(for: .milliseconds(200))
            }
            let next = try await client.openStream(stream)
            for n in 10..<20 { _ = try await next.append([record(n)]) }
            let seen = try await tail.value
            await next.close()
            withExtendedLifetime(silent) {}
            return seen
        }
        #expect(tailed == (0..<20).map { UInt64($0) }, "the tail saw \(tailed)")
    }

    /// A writer that died after the placement driver recorded its new range but before any replica created it
    /// leaves an open range no replica holds. Readers read every record before it and then see the stream's end
    /// (nothing in that range can have been acknowledged), not an error.
    @Test func anOpenRangeNoReplicaHoldsIsTheStreamsEnd() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()), "build the server first: \(serverPath())")
        let cluster = try NodeCluster(nodes: 1)
        try cluster.startAll()
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        let (all, atEnd) = try await withClient(reactor, cluster) { box -> (Int, Int) in
            let client = box.value
            try await waitForServers(client, 1)
            let stream = try await client.createStream(replicas: 1, ackCount: 1).streamID
            let writer = try await client.openStream(stream)
            for n in 0..<10 { _ = try await writer.append([record(n)]) }
            await writer.close()
            // A new writer's first steps, on the placement driver only: a new epoch, and the next range recorded.
            var open = Elasticstream_V1_OpenStreamRequest()
            open.streamID = stream
            let opened = try await client.pd.call(.openStream, open, as: Elasticstream_V1_OpenStreamResponse.self)
            var create = Elasticstream_V1_CreateRangeRequest()
            create.range.streamID = stream
            create.range.index = opened.ranges.last!.index + 1
            create.range.startOffset = 10
            create.epoch = opened.stream.epoch
            _ = try await client.pd.call(.pdCreateRange, create, as: Elasticstream_V1_CreateRangeResponse.self)
            let all = try await readAll(client, stream, to: .max).count
            let atEnd = try await client.read(stream: stream, from: 10).count
            return (all, atEnd)
        }
        #expect(all == 10 && atEnd == 0)
    }

    /// Short writers (each opens the stream, appends, closes: a new range each) write while two of the three nodes
    /// are killed with SIGKILL at once and restarted 3 s later; then all three are killed and restarted. Every
    /// acknowledged record reads back exactly once, in order, byte for byte, from the ranges written before, during
    /// and after the fault.
    @Test func acknowledgedRecordsSurviveTwoNodesKilledAtOnce() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()), "build the server first: \(serverPath())")
        let cluster = try NodeCluster()
        try cluster.startAll()
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        let log = AckLog()
        var configuration = ClientConfiguration()
        configuration.failoverTimeout = .seconds(60)
        let stream = try await withClient(reactor, cluster) { box -> UInt64 in
            try await waitForServers(box.value, 3)
            return try await box.value.createStream(replicas: 3, ackCount: 2).streamID
        }
        async let writing: Int = withClient(reactor, cluster, configuration: configuration) { box -> Int in
            let client = box.value
            var next = 0
            var writers = 0
            while !log.stopped {
                guard let writer = try? await client.openStream(stream) else {
                    try await client.context.sleep(for: .milliseconds(100))
                    continue
                }
                writers += 1
                for _ in 0..<4 where !log.stopped {
                    let numbers = next..<(next + 3)
                    next += 3
                    do {
                        let offset = try await writer.append(numbers.map { record($0) })
                        log.ack(offset, numbers)
                    } catch {
                        log.fail(numbers)
                        break
                    }
                }
                await writer.close()
            }
            return writers
        }
        func waitFor(_ count: Int, within seconds: Double) async throws {
            let deadline = Date().addingTimeInterval(seconds)
            while log.count < count && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        }
        try await waitFor(150, within: 120)
        let victims = [2, 3]
        for node in victims { cluster.kill(node) }
        try await Task.sleep(for: .seconds(3))
        for node in victims { try cluster.start(node) }
        let afterFault = log.count
        try await waitFor(afterFault + 150, within: 180)
        log.stop()
        let writers = try await writing
        #expect(log.count >= afterFault + 150, "the writers acknowledged only \(log.count - afterFault) records after the fault")
        for node in 1...3 { cluster.kill(node) }
        try cluster.startAll()
        let records = try await withClient(reactor, cluster) { box -> [ReadRecord] in
            try await waitForServers(box.value, 3)
            let ranges = try await box.value.ranges(of: stream)
            return try await readAll(box.value, stream, to: ranges.last!.sealed ? ranges.last!.endOffset : .max)
        }
        let problems = verify(records, against: log)
        #expect(problems.isEmpty, "\(writers) writers, \(log.count) acknowledged: \(problems.prefix(10))")
    }
}
