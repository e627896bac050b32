import Foundation
import Platform
import Reactor
import Records
import Testing
@testable import Store

/// Small segments and a checkpoint every 64 KiB of log.
func checkpointedConfiguration(_ directory: String, checkpointEvery: Int = 64 << 10) -> StoreConfiguration {
    StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 128 << 10,
                                             maxFlushBytes: 16 << 10, maxSpareSegments: 2),
                       cacheBytes: 0, checkpointIntervalBytes: checkpointEvery)
}

/// What a store holds, read back whole: per range, its start, end, sealed end and every batch's bytes.
struct Contents: Equatable, Sendable {
    var ranges: [String: [UInt64?]] = [:]
    var batches: [String: [[UInt8]]] = [:]
}

func contents(of store: ShardStore, _ keys: [RangeKey]) async throws -> Contents {
    var result = Contents()
    for key in keys {
        guard let description = store.describe(key) else { continue }
        result.ranges["\(key)"] = [description.start, description.confirmedEnd, description.sealedEnd]
        var offset = description.start
        var batches: [[UInt8]] = []
        while offset < description.confirmedEnd {
            let read = try await store.read(key, from: offset, maxBytes: 64 << 10)
            if read.isEmpty { break }
            for bytes in read {
                batches.append(bytes)
                offset = bytes.withUnsafeBytes { RecordBatchView(alreadyValidated: $0).endOffset }
            }
        }
        result.batches["\(key)"] = batches
    }
    return result
}

/// Where recovery started and what it found: bytes replayed, contents.
struct Reopened: Sendable {
    var recoveredBytes: UInt64
    var contents: Contents
}

func reopen(_ reactor: Reactor, _ configuration: StoreConfiguration, _ keys: [RangeKey]) async throws -> Reopened {
    try await reactor.run(on: 0) { context in
        let store = try await ShardStore.open(configuration, on: context)
        let reopened = Reopened(recoveredBytes: store.recoveredBytes, contents: try await contents(of: store, keys))
        await store.close()
        return reopened
    }
}

@Suite(.serialized) struct CheckpointTests {
    /// Appends across two ranges (with a seal and a trim), then "crashes" (the store is dropped without close, so no
    /// closing checkpoint): recovery replays only the log after the last periodic checkpoint, and what it rebuilds is
    /// exactly what was acknowledged. After a clean close, it replays nothing.
    @Test func recoveryReplaysOnlyTheLogAfterTheLastCheckpoint() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = checkpointedConfiguration(directory)
            let keys = [rangeA, rangeB]
            let (before, written, checkpoints) = try await reactor.run(on: 0) { context -> (Contents, UInt64, Int) in
                let store = try await ShardStore.open(configuration, on: context)
                let box = StoreBox(store: store)
                try await store.createRange(rangeA, start: 0)
                try await store.createRange(rangeB, start: 100)
                var a: UInt64 = 0
                var b: UInt64 = 100
                for round in 0..<300 {
                    let count = round % 5 + 1
                    guard case .committed = try await box.append(try batch(rangeA, a, count: count)) else {
                        throw StoreError.walFailed("append to A refused")
                    }
                    a += UInt64(count)
                    if round < 200 {
                        guard case .committed = try await box.append(try batch(rangeB, b, count: 3)) else {
                            throw StoreError.walFailed("append to B refused")
                        }
                        b += 3
                    }
                    if round == 200 { _ = try await store.seal(rangeB) }
                    if round == 250 { try await store.trim(rangeA, below: 40) }
                }
                // Dropped without close: the last checkpoint is a periodic one.
                return (try await contents(of: store, keys), store.walBytes, store.checkpointCount)
            }
            #expect(written > 4 * UInt64(64 << 10), "only \(written) bytes of log")
            #expect(checkpoints >= 3, "\(checkpoints) checkpoints for \(written) bytes of log")
            #expect(before.ranges["\(rangeB)"]?[2] == 700, "B is sealed at 100 + 200 × 3")

            let afterCrash = try await reopen(reactor, configuration, keys)
            #expect(afterCrash.contents == before)
            #expect(afterCrash.recoveredBytes > 0)
            #expect(afterCrash.recoveredBytes <= UInt64(64 << 10 + 2 * (16 << 10)),
                    "replayed \(afterCrash.recoveredBytes) of \(written) bytes")

            let afterClose = try await reopen(reactor, configuration, keys)
            #expect(afterClose.contents == before)
            #expect(afterClose.recoveredBytes == 0, "a clean close leaves nothing to replay")
        }
    }

    /// The newest checkpoint damaged: recovery falls back to the older one and replays the log from there, which is
    /// still all there (segments are reused only below the older checkpoint). Both damaged: a corruption error that
    /// names the checkpoint, never a store that silently lost its ranges.
    @Test func aDamagedCheckpointFallsBackToTheOlderAndBothDamagedIsAnError() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = checkpointedConfiguration(directory, checkpointEvery: 32 << 10)
            let keys = [rangeA]
            let before = try await reactor.run(on: 0) { context -> Contents in
                let store = try await ShardStore.open(configuration, on: context)
                let box = StoreBox(store: store)
                try await store.createRange(rangeA, start: 0)
                var offset: UInt64 = 0
                for round in 0..<400 {
                    _ = try await box.append(try batch(rangeA, offset, count: 4))
                    offset += 4
                    if round % 100 == 99 { try await store.trim(rangeA, below: offset - 40) }
                }
                return try await contents(of: store, keys)
            }
            // Damage the newest slot (the one with the higher sequence) in its body.
            func sequence(_ slot: Int) throws -> UInt64 {
                let data = try Data(contentsOf: URL(fileURLWithPath: Checkpoint.slotPath(directory, slot)))
                return data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 24, as: UInt64.self) }
            }
            let newest = try sequence(0) > sequence(1) ? 0 : 1
            try overwrite(Checkpoint.slotPath(directory, newest), at: 60, with: [0xFF, 0xEE])
            let fallback = try await reopen(reactor, configuration, keys)
            #expect(fallback.contents == before)
            #expect(fallback.recoveredBytes > 0)

            // A slot torn at a sector boundary (its size no longer a whole number of 4 KiB blocks): the store still
            // opens, from the other slot, with everything there.
            let newer = try sequence(0) > sequence(1) ? 0 : 1
            let torn = Checkpoint.slotPath(directory, newer)
            let size = try FileManager.default.attributesOfItem(atPath: torn)[.size] as! Int
            try #require(size > 4096, "the slot is \(size) bytes")
            try FileHandle(forWritingTo: URL(fileURLWithPath: torn)).truncate(atOffset: UInt64(size - 4096 + 512))
            let afterTear = try await reopen(reactor, configuration, keys)
            #expect(afterTear.contents == before)

            // That reopen wrote a fresh checkpoint into the damaged slot and closed with another; damage both.
            try overwrite(Checkpoint.slotPath(directory, 0), at: 60, with: [0xFF, 0xEE])
            try overwrite(Checkpoint.slotPath(directory, 1), at: 60, with: [0xFF, 0xEE])
            let error = await #expect(throws: StoreError.self) { _ = try await reopen(reactor, configuration, keys) }
            guard case .corruption(let file, _, let detail) = error else {
                Issue.record("expected corruption, got \(String(describing: error))")
                return
            }
            #expect(file.hasSuffix(".ckpt") && detail.contains("no valid checkpoint"), "\(file): \(detail)")
        }
    }

    /// Segments that nothing points into any more are renamed to the next index instead of new ones being created:
    /// the files on disk stay few however much is written, and reads and recovery stay correct across the reuse.
    @Test func trimmedSegmentsAreReused() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = checkpointedConfiguration(directory)
            let keys = [rangeA]
            let (before, written, reused) = try await reactor.run(on: 0) { context -> (Contents, UInt64, Int) in
                let store = try await ShardStore.open(configuration, on: context)
                let box = StoreBox(store: store)
                try await store.createRange(rangeA, start: 0)
                var offset: UInt64 = 0
                for round in 0..<3000 {
                    _ = try await box.append(try batch(rangeA, offset, count: 8))
                    offset += 8
                    if round % 50 == 49 { try await store.trim(rangeA, below: offset - 200) }
                }
                let result = (try await contents(of: store, keys), store.walBytes, store.wal.reusedSegments)
                await store.close()
                return result
            }
            let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".wal") }
            #expect(written > 20 * UInt64(128 << 10), "only \(written) bytes of log")
            #expect(reused >= 10, "\(reused) segments reused for \(written) bytes of log")
            #expect(files.count <= 8, "\(files.count) segment files: \(files.sorted())")
            let after = try await reopen(reactor, configuration, keys)
            #expect(after.contents == before)
            #expect(before.batches["\(rangeA)"]?.count ?? 0 >= 25)
        }
    }

    /// Appends far beyond what one flush holds, of mixed sizes, from many tasks into one range, in offset order:
    /// every one lands at its offset (waiting appends keep their place in line).
    @Test func appendsKeepTheirOrderUnderBackPressure() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = checkpointedConfiguration(directory)
            let outcomes = try await reactor.run(on: 0) { context -> [AppendOutcome] in
                let store = try await ShardStore.open(configuration, on: context)
                let box = StoreBox(store: store)
                try await store.createRange(rangeA, start: 0)
                var batches: [[UInt8]] = []
                var offset: UInt64 = 0
                for i in 0..<200 {
                    let count = i % 3 == 0 ? 40 : 1  // about 2 KiB or 50 bytes
                    batches.append(try batch(rangeA, offset, count: count))
                    offset += UInt64(count)
                }
                let all = batches
                let outcomes = try await withThrowingTaskGroup(of: (Int, AppendOutcome).self) { group in
                    for (i, bytes) in all.enumerated() { group.addTask { (i, try await box.append(bytes)) } }
                    var outcomes = [AppendOutcome?](repeating: nil, count: all.count)
                    for try await (i, outcome) in group { outcomes[i] = outcome }
                    return outcomes.map { $0! }
                }
                await store.close()
                return outcomes
            }
            let refused = outcomes.enumerated().filter {
                if case .committed = $0.element { return false }
                return true
            }
            #expect(refused.isEmpty, "\(refused.prefix(3))")
        }
    }

    /// A seal waits for the appends in flight; appends that arrive once it has begun are refused as sealed, and the
    /// end it returns is the end of what was acknowledged.
    @Test func appendsArrivingDuringASealAreRefused() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let (end, late, described) = try await withStore(reactor, directory) { box -> (UInt64, AppendOutcome, UInt64?) in
                try await box.store.createRange(rangeA, start: 0)
                async let first = box.append(try batch(rangeA, 0, count: 10))
                async let sealed = box.store.seal(rangeA)
                async let late = box.append(try batch(rangeA, 10, count: 10))
                _ = try await first
                return (try await sealed, try await late, box.store.describe(rangeA)?.sealedEnd)
            }
            #expect(end == 10)
            #expect(late == .sealed(end: 10))
            #expect(described == 10)
        }
    }
}
