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
    private(set) var acknowledged: UInt64 = 0
    private var started = false

    func feed(_ data: Data) {
        lock.lock()
        defer { lock.unlock() }
        buffer.append(data)
        while let newline = buffer.firstIndex(of: 0x0A) {
            let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
            buffer.removeSubrange(buffer.startIndex...newline)
            if line.hasPrefix("ACK "), let end = UInt64(line.dropFirst(4)) { acknowledged = max(acknowledged, end) }
            if line.hasPrefix("START") { started = true }
        }
    }

    var snapshot: (started: Bool, acknowledged: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        return (started, acknowledged)
    }
}

@Suite(.serialized) struct CrashTests {
    /// A child appends with several appends in flight and is killed with SIGKILL at random moments, many times.
    /// After each kill the store recovers; every acknowledged record reads back byte for byte with a valid
    /// checksum, offsets are contiguous from 0, and nothing unacknowledged appears as garbage.
    @Test func everyAcknowledgedRecordSurvivesSIGKILL() async throws {
        let child = crashChildPath()
        try #require(FileManager.default.isExecutableFile(atPath: child),
                     "build the crash child first (swift build builds it): \(child)")
        try await withDirectory { directory in
            var rng = SeededGenerator(seed: 20261126)
            var everAcknowledged: UInt64 = 0
            let rounds = 12
            for round in 0..<rounds {
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
                try await Task.sleep(for: .milliseconds(Int.random(in: 5...150, using: &rng)))
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                output.fileHandleForReading.readabilityHandler = nil
                lines.feed(output.fileHandleForReading.readDataToEndOfFile())
                everAcknowledged = max(everAcknowledged, lines.snapshot.acknowledged)

                // Recover in this process and check every byte.
                let reactor = try Reactor(configuration: .testing(shards: 1))
                defer { reactor.shutdown() }
                let check = try await reactor.run(on: 0) { context -> (UInt64, Int, [String]) in
                    let store = try await ShardStore.open(
                        StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 256 << 10,
                                                                 maxFlushBytes: 32 << 10)), on: context)
                    let key = RangeKey(streamID: 42, index: 0)
                    let end = store.describe(key)?.confirmedEnd ?? 0
                    var problems: [String] = []
                    var expected: UInt64 = 0
                    var batches = 0
                    while expected < end {
                        let read = try await store.read(key, from: expected, maxBytes: 1 << 20)
                        if read.isEmpty { problems.append("nothing at \(expected) below \(end)"); break }
                        for bytes in read {
                            batches += 1
                            bytes.withUnsafeBytes { raw in
                                guard let view = try? RecordBatchView(validating: raw) else {
                                    problems.append("batch at \(expected) fails validation")
                                    return
                                }
                                if view.baseOffset != expected { problems.append("gap: \(view.baseOffset) != \(expected)") }
                                for record in view.records where !record.value.elementsEqual(crashTestValue(record.offset)) {
                                    problems.append("record \(record.offset) altered")
                                }
                                expected = view.endOffset
                            }
                        }
                    }
                    await store.close()
                    return (end, batches, problems)
                }
                #expect(check.2.isEmpty, "round \(round): \(check.2.prefix(5))")
                #expect(check.0 >= everAcknowledged,
                        "round \(round): recovered end \(check.0) is below the acknowledged \(everAcknowledged)")
            }
            #expect(everAcknowledged > 0, "the child never acknowledged anything")
        }
    }
}
