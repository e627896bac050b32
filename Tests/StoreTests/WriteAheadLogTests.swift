import CSupport
import TestSupport
import Foundation
import Platform
import Reactor
import Testing
@testable import Store

/// A fresh directory on disk (O_DIRECT needs one), removed afterwards.
func withDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    try await withTemporaryDirectory("es-wal", body)
}

func smallLog(_ directory: String) -> WALConfiguration {
    WALConfiguration(directory: directory, segmentSizeBytes: 128 << 10, maxFlushBytes: 16 << 10)
}

/// Entry payloads that say who they are: 8 bytes of sequence number, then filler of a length derived from it.
func payload(_ sequence: Int) -> [UInt8] {
    withUnsafeBytes(of: UInt64(sequence).littleEndian) { Array($0) }
        + Array(repeating: UInt8(truncatingIfNeeded: sequence), count: (sequence * 37) % 3000)
}

struct Recovered: Sendable, Equatable {
    var sequences: [Int] = []
    var positions: [UInt64] = []
}

/// Collects what recovery replays, and counts the entries applied live as their flushes become durable (checking
/// that those arrive in log order).
final class CollectingSink: WALSink {
    var recovered = Recovered()
    var liveApplied = 0
    var lastLivePosition: UInt64?

    func apply(_ entry: RecoveredEntry, recovering: Bool) throws(StoreError) {
        let sequence = Int(entry.payload.loadUnaligned(as: UInt64.self))
        precondition(entry.payload.elementsEqual(payload(sequence)), "payload altered")
        if recovering {
            recovered.sequences.append(sequence)
            recovered.positions.append(entry.position)
        } else {
            precondition(lastLivePosition.map { $0 < entry.position } ?? true, "live entries out of order")
            lastLivePosition = entry.position
            liveApplied += 1
        }
    }
}

/// Opens the log, collecting what recovery replays, runs `body`, and closes it.
func withLog<T: Sendable>(
    _ reactor: Reactor, _ configuration: WALConfiguration,
    _ body: @escaping @Sendable (WriteAheadLogBox) async throws -> T
) async throws -> (Recovered, T) {
    try await reactor.run(on: 0) { context in
        let sink = CollectingSink()
        let log = try await WriteAheadLog.open(configuration, on: context, sink: sink)
        let result = try await body(WriteAheadLogBox(log))
        await log.close()
        return (sink.recovered, result)
    }
}

/// Carries the shard-bound log into closures that run on its shard.
struct WriteAheadLogBox: @unchecked Sendable {
    let log: WriteAheadLog
    init(_ log: WriteAheadLog) { self.log = log }

    func append(_ sequence: Int) async throws -> UInt64 {
        let bytes = payload(sequence)
        return try await withBytes(bytes) { try await log.append(.append, $0) }
    }
}

/// Runs `body` with the bytes of `array` in stable memory for as long as it awaits.
func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) async throws -> R) async rethrows -> R {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, array.count), alignment: 8)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: array)
    return try await body(UnsafeRawBufferPointer(rebasing: buffer[..<array.count]))
}

/// Appends `sequences` from concurrent tasks on the log's shard; returns the positions.
func appendConcurrently(_ box: WriteAheadLogBox, _ sequences: Range<Int>) async throws -> [Int: UInt64] {
    try await withThrowingTaskGroup(of: (Int, UInt64).self) { group in
        for sequence in sequences { group.addTask { (sequence, try await box.append(sequence)) } }
        var positions: [Int: UInt64] = [:]
        for try await (sequence, position) in group { positions[sequence] = position }
        return positions
    }
}

func overwrite(_ path: String, at offset: UInt64, with bytes: [UInt8]) throws {
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.seek(toOffset: offset)
    try handle.write(contentsOf: Data(bytes))
    try handle.synchronize()
    try handle.close()
}

@Suite(.serialized) struct WriteAheadLogTests {
    @Test func appendedEntriesAreRecoveredInOrderAcrossSegments() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            let (first, positions) = try await withLog(reactor, configuration) { box in
                try await appendConcurrently(box, 0..<300)
            }
            #expect(first.sequences.isEmpty)
            let (second, _) = try await withLog(reactor, configuration) { _ in 0 }
            // Every acknowledged entry comes back, in WAL order, at the position it was acknowledged at.
            #expect(Set(second.sequences) == Set(0..<300))
            #expect(second.positions == second.positions.sorted())
            for (sequence, position) in zip(second.sequences, second.positions) {
                #expect(positions[sequence] == position)
            }
            // 300 entries of up to 3 KiB in 128 KiB segments: several segments were used.
            let segments = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".wal") }
            #expect(segments.count >= 4)
        }
    }

    @Test func concurrentAppendsShareFlushes() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let (_, flushes) = try await withLog(reactor, WALConfiguration(directory: directory,
                                                                           segmentSizeBytes: 4 << 20)) { box in
                _ = try await appendConcurrently(box, 0..<64)
                return box.log.flushCount
            }
            #expect(flushes >= 1)
            #expect(flushes <= 8, "64 concurrent appends took \(flushes) flushes")
        }
    }

    @Test func aTornLastWriteIsDiscardedAndOverwritten() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            // One entry per flush: each append waits for the previous.
            let (_, positions) = try await withLog(reactor, configuration) { box in
                var positions: [UInt64] = []
                for sequence in 0..<10 { positions.append(try await box.append(sequence)) }
                return positions
            }
            // Tear the last flush: garbage over its first bytes.
            let segment = "\(directory)/segment-00000000.wal"
            try overwrite(segment, at: positions[9] + 4, with: Array(repeating: 0xAB, count: 64))
            let (afterTear, _) = try await withLog(reactor, configuration) { box in
                try await box.append(100)
            }
            #expect(afterTear.sequences == Array(0..<9))
            // The new entry took the torn one's place, and everything reads straight through.
            let (final, _) = try await withLog(reactor, configuration) { _ in 0 }
            #expect(final.sequences == Array(0..<9) + [100])
        }
    }

    @Test func aTornWriteThatLeftAPartialBlockIsPaddedOver() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            // Three small entries in one flush (same turn), then damage the third: the first two survive in a
            // partial block that recovery must close with padding.
            let (_, positions) = try await withLog(reactor, configuration) { box in
                let all = try await withThrowingTaskGroup(of: UInt64.self) { group in
                    for sequence in [1, 2, 3] { group.addTask { try await box.append(sequence * 100) } }
                    return try await group.reduce(into: [UInt64]()) { $0.append($1) }
                }
                return all.sorted()
            }
            try overwrite("\(directory)/segment-00000000.wal", at: positions[2], with: [0xFF, 0xFF, 0xFF, 0xFF])
            let (recovered, _) = try await withLog(reactor, configuration) { box in try await box.append(7) }
            #expect(recovered.sequences.count == 2)
            let (final, _) = try await withLog(reactor, configuration) { _ in 0 }
            #expect(final.sequences == recovered.sequences + [7])
        }
    }

    @Test func corruptionInTheMiddleIsReportedWithFileAndPosition() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            let (_, positions) = try await withLog(reactor, configuration) { box in
                var positions: [UInt64] = []
                for sequence in 0..<6 { positions.append(try await box.append(sequence)) }
                return positions
            }
            try overwrite("\(directory)/segment-00000000.wal", at: positions[2] + 30, with: [0x5A])
            do {
                _ = try await withLog(reactor, configuration) { _ in 0 }
                Issue.record("corruption in the middle was not reported")
            } catch let error as StoreError {
                guard case .corruption(let file, let position, _) = error else {
                    Issue.record("unexpected error \(error)")
                    return
                }
                #expect(file.hasSuffix("segment-00000000.wal"))
                #expect(position == positions[2])
            }
        }
    }

    @Test func corruptionAtTheEndOfASegmentIsCaughtByTheNext() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            let (_, positions) = try await withLog(reactor, configuration) { box in
                var positions: [UInt64] = []
                for sequence in 0..<200 { positions.append(try await box.append(sequence)) }
                return positions
            }
            // The last entry of segment 0, damaged: segment 1 opens with a flush that followed it.
            let segmentSize = UInt64(configuration.segmentSizeBytes)
            guard let last = positions.last(where: { $0 < segmentSize }), positions.contains(where: { $0 >= segmentSize })
            else {
                Issue.record("the log did not reach a second segment")
                return
            }
            try overwrite("\(directory)/segment-00000000.wal", at: last + 8, with: [0x01, 0x02])
            await #expect(throws: StoreError.self) { _ = try await withLog(reactor, configuration) { _ in 0 } }
        }
    }

    @Test func aReusedSegmentNeverReplaysItsOldEntries() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            _ = try await withLog(reactor, configuration) { box in
                for sequence in 0..<5 { _ = try await box.append(sequence) }
                return 0
            }
            // Recycle segment 0 as segment 1 (old bytes, new positions) and start over with a zeroed segment 0.
            let zero = "\(directory)/segment-00000000.wal"
            let one = "\(directory)/segment-00000001.wal"
            try? FileManager.default.removeItem(atPath: one)  // prepared ahead of need, still zeros
            try FileManager.default.moveItem(atPath: zero, toPath: one)
            try Data(count: configuration.segmentSizeBytes).write(to: URL(fileURLWithPath: zero))
            let (recovered, _) = try await withLog(reactor, configuration) { _ in 0 }
            #expect(recovered.sequences.isEmpty)
        }
    }

    @Test func oversizedEntriesAreRefused() async throws {
        try await withDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configuration = smallLog(directory)
            let refused = try await withLog(reactor, configuration) { box -> Bool in
                let big = [UInt8](repeating: 1, count: 16 << 10)
                do {
                    _ = try await withBytes(big) { try await box.log.append(.append, $0) }
                    return false
                } catch let error as StoreError {
                    if case .entryTooLarge = error { return true }
                    return false
                }
            }.1
            #expect(refused)
        }
    }
}

