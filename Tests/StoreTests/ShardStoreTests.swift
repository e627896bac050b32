import Foundation
import Platform
import Reactor
import Records
import Testing
@testable import Store

/// A batch of `count` records for `key` starting at `offset`, whose values say where they belong.
func batch(_ key: RangeKey, _ offset: UInt64, count: Int, timestamp: Int64 = 1_000_000) throws -> [UInt8] {
    try RecordBatch(
        streamID: key.streamID, rangeIndex: key.index, baseOffset: offset, baseTimestamp: timestamp,
        records: (0..<count).map { i in
            Record(timestamp: timestamp + Int64(i) * 10, value: Array("\(key) @ \(offset + UInt64(i))".utf8))
        }
    ).encoded()
}

struct StoreBox: @unchecked Sendable {
    let store: ShardStore
    func append(_ bytes: [UInt8]) async throws -> AppendOutcome {
        try await withBytes(bytes) { raw in try await store.append(try RecordBatchView(validating: raw)) }
    }
}

/// Opens the store on shard 0 of `reactor`, runs `body`, closes it.
func withStore<T: Sendable>(_ reactor: Reactor, _ directory: String, cacheBytes: Int = 1 << 20,
                            _ body: @escaping @Sendable (StoreBox) async throws -> T) async throws -> T {
    try await reactor.run(on: 0) { context in
        let configuration = StoreConfiguration(wal: smallLog(directory), cacheBytes: cacheBytes)
        let store = try await ShardStore.open(configuration, on: context)
        do {
            let result = try await body(StoreBox(store: store))
            await store.close()
            return result
        } catch {
            await store.close()
            throw error
        }
    }
}

let rangeA = RangeKey(streamID: 7, index: 0)
let rangeB = RangeKey(streamID: 8, index: 3)

@Suite(.serialized) struct ShardStoreTests {
    @Test func appendsAnswerWithTypedOutcomes() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let outcomes = try await withStore(reactor, directory) { box -> [AppendOutcome] in
                try await box.store.createRange(rangeA, start: 0)
                var outcomes: [AppendOutcome] = []
                outcomes.append(try await box.append(try batch(rangeA, 0, count: 10)))
                outcomes.append(try await box.append(try batch(rangeA, 0, count: 10)))  // retried
                outcomes.append(try await box.append(try batch(rangeA, 20, count: 5)))  // a gap
                outcomes.append(try await box.append(try batch(rangeB, 0, count: 1)))  // no such range
                // Two pipelined appends, and a duplicate of the first while it is in flight.
                async let first = box.append(try batch(rangeA, 10, count: 10))
                async let second = box.append(try batch(rangeA, 20, count: 10))
                async let duplicate = box.append(try batch(rangeA, 10, count: 10))
                outcomes += [try await first, try await second, try await duplicate]
                return outcomes
            }
            #expect(outcomes[0] == .committed(confirmedEnd: 10))
            #expect(outcomes[1] == .alreadyCommitted(confirmedEnd: 10))
            #expect(outcomes[2] == .overtaken(expected: 10))
            #expect(outcomes[3] == .rangeNotFound)
            #expect(outcomes[4] == .committed(confirmedEnd: 20))
            #expect(outcomes[5] == .committed(confirmedEnd: 30))
            #expect(outcomes[6] == .pending)
        }
    }

    @Test func aSealedRangeRefusesAppendsAcrossRestarts() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let (end, after) = try await withStore(reactor, directory) { box -> (UInt64, AppendOutcome) in
                try await box.store.createRange(rangeA, start: 100)
                _ = try await box.append(try batch(rangeA, 100, count: 4))
                let end = try await box.store.seal(rangeA)
                return (end, try await box.append(try batch(rangeA, 104, count: 1)))
            }
            #expect(end == 104)
            #expect(after == .sealed(end: 104))
            let (described, again, resealed) = try await withStore(reactor, directory) { box in
                (box.store.describe(rangeA), try await box.append(try batch(rangeA, 104, count: 1)),
                 try await box.store.seal(rangeA))
            }
            #expect(described?.sealedEnd == 104)
            #expect(described?.confirmedEnd == 104)
            #expect(again == .sealed(end: 104))
            #expect(resealed == 104)
        }
    }

    @Test func readsComeBackByteForByteFromCacheAndFromDisk() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let written = try (0..<20).map { try batch(rangeA, UInt64($0 * 5), count: 5) }
            let hot = try await withStore(reactor, directory) { box -> [[UInt8]] in
                try await box.store.createRange(rangeA, start: 0)
                for bytes in written { _ = try await box.append(bytes) }
                return try await box.store.read(rangeA, from: 0, maxBytes: .max)
            }
            #expect(hot == written)
            // After a restart the cache is empty: the same bytes come from the WAL on disk.
            let (warm, middle, budget, byTime) = try await withStore(reactor, directory, cacheBytes: 0) { box in
                (try await box.store.read(rangeA, from: 0, maxBytes: .max),
                 try await box.store.read(rangeA, from: 52, maxBytes: 1),
                 try await box.store.read(rangeA, from: 0, maxBytes: written[0..<3].reduce(0) { $0 + $1.count }),
                 try await box.store.offset(rangeA, atOrAfter: 1_000_025))
            }
            #expect(warm == written)
            #expect(middle == [written[10]])  // offset 52 lives in the batch [50, 55); one batch past the budget
            #expect(budget.count == 3)
            #expect(byTime == 3)  // record timestamps are 1_000_000 + 10 * i within each batch of 5
        }
    }

    @Test func trimAndDeleteSurviveARestart() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            _ = try await withStore(reactor, directory) { box in
                try await box.store.createRange(rangeA, start: 0)
                try await box.store.createRange(rangeB, start: 0)
                for i in 0..<4 { _ = try await box.append(try batch(rangeA, UInt64(i * 10), count: 10)) }
                _ = try await box.append(try batch(rangeB, 0, count: 3))
                try await box.store.trim(rangeA, below: 25)
                try await box.store.delete(rangeB)
                return 0
            }
            let (a, b, firstRead) = try await withStore(reactor, directory) { box in
                (box.store.describe(rangeA), box.store.describe(rangeB),
                 try await box.store.read(rangeA, from: 0, maxBytes: 1))
            }
            #expect(a?.start == 20)
            #expect(a?.confirmedEnd == 40)
            #expect(b == nil)
            #expect(firstRead == [try batch(rangeA, 20, count: 10)])
        }
    }

    @Test func creatingARangeTwiceIsIdempotentButNotWithAnotherStart() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let conflict = try await withStore(reactor, directory) { box -> Bool in
                try await box.store.createRange(rangeA, start: 5)
                try await box.store.createRange(rangeA, start: 5)
                do {
                    try await box.store.createRange(rangeA, start: 6)
                    return false
                } catch let error as StoreError {
                    if case .rangeConflict = error { return true }
                    return false
                }
            }
            #expect(conflict)
        }
    }
}

extension ShardStoreTests {
    /// An append refused for its size leaves the appends before it in flight: a fence waits for them and answers
    /// the end they reach (answering an older end would let a new writer seal below an acknowledged record).
    @Test func aRefusedAppendDoesNotHideEarlierOnesFromAFence() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let (first, refused, fenced) = try await withStore(reactor, directory) { box -> (AppendOutcome, Bool, UInt64) in
                try await box.store.createRange(rangeA, start: 0)
                let small = try batch(rangeA, 0, count: 10)
                let large = try RecordBatch(streamID: rangeA.streamID, rangeIndex: rangeA.index, baseOffset: 10,
                                            baseTimestamp: 0,
                                            records: [Record(timestamp: 0, value: [UInt8](repeating: 1, count: 40_000))])
                    .encoded()
                // Tasks on the shard start in order: the first is placed in the log before the second runs.
                let a = box.store.context.spawn { try await box.append(small) }
                let b = box.store.context.spawn { () -> (Bool, UInt64) in
                    var refused = false
                    do { _ = try await box.append(large) } catch { refused = true }
                    return (refused, try await box.store.fence(rangeA))
                }
                let (refused, end) = try await b.value
                return (try await a.value, refused, end)
            }
            #expect(first == .committed(confirmedEnd: 10))
            #expect(refused)
            #expect(fenced == 10, "the fence answered \(fenced) while an append up to 10 was in flight")
        }
    }
}

extension ShardStoreTests {
    /// A misdirected write leaves a valid batch of the same range where another belongs: its checksum passes, so only
    /// the check that it is the batch the index expects catches it. The sealed replica then forgets that batch and
    /// the ones after it, durably, and a repair (the batches again, as a peer would send them) makes it whole.
    @Test func aMisplacedBatchIsRefusedDiscardedAndRepaired() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            // Offsets with the same number of digits: every batch has the same length.
            let written = try (0..<4).map { try batch(rangeA, 100 + UInt64($0 * 5), count: 5) }
            _ = try await withStore(reactor, directory) { box in
                try await box.store.createRange(rangeA, start: 100)
                for bytes in written { _ = try await box.append(bytes) }
                _ = try await box.store.seal(rangeA)
                // Below the checkpoint, recovery does not scan the log again: only reads see the damage.
                try await box.store.checkpoint()
                return 0
            }
            // The batch [105, 110) lands where [110, 115) was.
            let segment = "\(directory)/segment-00000000.wal"
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: segment)))
            let at = try #require(bytes.firstRange(of: written[2])).lowerBound
            bytes.replaceSubrange(at..<(at + written[1].count), with: written[1])
            try Data(bytes).write(to: URL(fileURLWithPath: segment))

            let (refused, after) = try await withStore(reactor, directory, cacheBytes: 0) { box in
                var refused = ""
                do {
                    _ = try await box.store.read(rangeA, from: 110, maxBytes: .max)
                } catch {
                    refused = "\(error)"
                }
                return (refused, box.store.describe(rangeA))
            }
            #expect(refused.contains("offset 110"), "\(refused)")
            #expect(after?.confirmedEnd == 110)
            #expect(after?.sealedEnd == 120)
            // Durable: a restart keeps the replica short, and a repair fills it from the damaged batch on.
            let (restarted, outcomes, read) = try await withStore(reactor, directory, cacheBytes: 0) { box in
                let restarted = box.store.describe(rangeA)
                var outcomes: [AppendOutcome] = []
                for bytes in written[2...] {
                    outcomes.append(try await withBytes(bytes) { raw in
                        try await box.store.repair(try RecordBatchView(validating: raw))
                    })
                }
                return (restarted, outcomes, try await box.store.read(rangeA, from: 100, maxBytes: .max))
            }
            #expect(restarted?.confirmedEnd == 110)
            #expect(outcomes == [.committed(confirmedEnd: 115), .committed(confirmedEnd: 120)])
            #expect(read == written)
        }
    }
}
