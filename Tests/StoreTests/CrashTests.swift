import Foundation
import Platform
import Reactor
import Records
import TestSupport
import Testing
@testable import Store

/// The record values the crash child writes (Tests/StoreCrash): a function of the offset.
func crashTestValue(_ offset: UInt64) -> [UInt8] {
    let text = Array("record \(offset);".utf8)
    return Array((0..<(Int(offset % 97) + 1)).map { text[$0 % text.count] })
}

/// Where `swift build` put the crash child: beside the test binary.
func crashChildPath() -> String {
    let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        .appendingPathComponent("store-crash-child").path
    return beside
}

/// Reads a child's stdout lines as they come, on a background thread.
final class LineCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer = Data()
    /// Per stream: the highest acknowledged end, and the highest trim the child asked for.
    private(set) var acknowledged: [UInt64: UInt64] = [:]
    private(set) var trims: [UInt64: UInt64] = [:]
    private var started = false

    func feed(_ data: Data) {
        lock.lock()
        defer { lock.unlock() }
        buffer.append(data)
        while let newline = buffer.firstIndex(of: 0x0A) {
            let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
            buffer.removeSubrange(buffer.startIndex...newline)
            let words = line.split(separator: " ")
            if words.count == 3, let stream = UInt64(words[1]), let offset = UInt64(words[2]) {
                if words[0] == "ACK" { acknowledged[stream] = max(acknowledged[stream] ?? 0, offset) }
                if words[0] == "TRIM" { trims[stream] = max(trims[stream] ?? 0, offset) }
            }
            if line == "START" { started = true }
        }
    }

    var snapshot: (started: Bool, acknowledged: [UInt64: UInt64], trims: [UInt64: UInt64]) {
        lock.lock()
        defer { lock.unlock() }
        return (started, acknowledged, trims)
    }
}

/// The configuration the child uses (Tests/StoreCrash).
func crashTestConfiguration(_ directory: String) -> StoreConfiguration {
    StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 256 << 10,
                                             maxFlushBytes: 32 << 10, maxSpareSegments: 2),
                       checkpointIntervalBytes: 384 << 10)
}

@Suite(.serialized) struct CrashTests {
    /// A child appends to four ranges with several appends in flight, trimming as it goes, and is killed with
    /// SIGKILL at random moments, many times. After each kill the store recovers from its last checkpoint; in every
    /// range, every acknowledged record above the trims reads back byte for byte with a valid checksum, offsets are
    /// contiguous, and nothing unacknowledged appears as garbage. Trimmed segments are reused: the number of segment
    /// files stays bounded however much was written.
    @Test func everyAcknowledgedRecordSurvivesSIGKILL() async throws {
        let child = crashChildPath()
        try #require(FileManager.default.isExecutableFile(atPath: child),
                     "build the crash child first (swift build builds it): \(child)")
        try await withDirectory { directory in
            var rng = SeededGenerator(seed: 20261126)
            var everAcknowledged: [UInt64: UInt64] = [:]
            var everTrimmed: [UInt64: UInt64] = [:]
            var walWritten: UInt64 = 0
            var mostSegments = 0
            // At least 12 rounds, and then more until enough WAL was written to exercise segment reuse: how much a
            // child writes before its kill depends on the machine's load, not on the test.
            let rounds = 12
            for round in 0..<400 {
                if round >= rounds && walWritten > 16 * (256 << 10) { break }
                let process = Process()
                process.executableURL = URL(fileURLWithPath: child)
                process.arguments = [directory]
                let output = Pipe()
                process.standardOutput = output
                process.standardError = FileHandle.nullDevice
                let lines = LineCollector()
                output.fileHandleForReading.readabilityHandler = { handle in lines.feed(handle.availableData) }
                try process.run()
                // Wait for recovery to finish in the child, then let it run a random while before the kill.
                let deadline = Date().addingTimeInterval(20)
                while !lines.snapshot.started && Date() < deadline { try await Task.sleep(for: .milliseconds(2)) }
                try #require(lines.snapshot.started, "round \(round): the child did not start")
                try await Task.sleep(for: .milliseconds(Int.random(in: 20...300, using: &rng)))
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                output.fileHandleForReading.readabilityHandler = nil
                lines.feed(output.fileHandleForReading.readDataToEndOfFile())
                everAcknowledged.merge(lines.snapshot.acknowledged, uniquingKeysWith: max)
                everTrimmed.merge(lines.snapshot.trims, uniquingKeysWith: max)

                // Recover in this process and check every byte.
                let reactor = try Reactor(configuration: .testing(shards: 1))
                defer { reactor.shutdown() }
                let acknowledged = everAcknowledged
                let trimmed = everTrimmed
                let check = try await reactor.run(on: 0) { context -> (UInt64, [String]) in
                    let store = try await ShardStore.open(crashTestConfiguration(directory), on: context)
                    var problems: [String] = []
                    for stream in UInt64(42)..<46 {
                        let key = RangeKey(streamID: stream, index: 0)
                        guard let description = store.describe(key) else {
                            if acknowledged[stream] != nil { problems.append("\(key) is gone") }
                            continue
                        }
                        let end = description.confirmedEnd
                        if end < acknowledged[stream] ?? 0 {
                            problems.append("\(key): recovered end \(end) below the acknowledged \(acknowledged[stream]!)")
                        }
                        if description.start > trimmed[stream] ?? 0 {
                            problems.append("\(key): start \(description.start) above any trim asked for")
                        }
                        var expected = description.start
                        while expected < end {
                            let read = try await store.read(key, from: expected, maxBytes: 1 << 20)
                            if read.isEmpty { problems.append("\(key): nothing at \(expected) below \(end)"); break }
                            for bytes in read {
                                bytes.withUnsafeBytes { raw in
                                    guard let view = try? RecordBatchView(validating: raw) else {
                                        problems.append("\(key): batch at \(expected) fails validation")
                                        return
                                    }
                                    if view.baseOffset != expected {
                                        problems.append("\(key): gap: \(view.baseOffset) != \(expected)")
                                    }
                                    for record in view.records
                                    where !record.value.elementsEqual(crashTestValue(record.offset)) {
                                        problems.append("\(key): record \(record.offset) altered")
                                    }
                                    expected = view.endOffset
                                }
                            }
                        }
                    }
                    let written = store.walBytes
                    await store.close()
                    return (written, problems)
                }
                #expect(check.1.isEmpty, "round \(round): \(check.1.prefix(5))")
                walWritten = check.0
                let segments = try FileManager.default.contentsOfDirectory(atPath: directory)
                    .filter { $0.hasSuffix(".wal") }.count
                mostSegments = max(mostSegments, segments)
            }
            #expect(everAcknowledged.count == 4, "the child did not acknowledge on every range: \(everAcknowledged)")
            // Four ranges of 2,000 to 2,500 live records (under 64 KiB each), a checkpoint interval of 384 KiB and
            // two spares: a handful of 256 KiB segments, however much was written.
            #expect(walWritten > 16 * (256 << 10), "only \(walWritten) bytes of WAL written: too little to test reuse")
            #expect(mostSegments <= 12, "\(mostSegments) segment files for \(walWritten) bytes written")
        }
    }
}
