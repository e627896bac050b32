import Foundation
import Platform
import Reactor
import Records
import TestSupport
import Testing
@testable import Store

/// What the crash child's "many" mode reported about one range (Tests/StoreCrash).
struct ReportedRange {
    let end: UInt64
    let sealed: Bool
    let acknowledged: UInt64
}

/// Collects `RANGE <stream> <end> <sealed> <acknowledged>` lines from the child.
final class RangeCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer = Data()
    private var ranges: [UInt64: ReportedRange] = [:]
    private var started = false

    func feed(_ data: Data) {
        lock.lock()
        defer { lock.unlock() }
        buffer.append(data)
        while let newline = buffer.firstIndex(of: 0x0A) {
            let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
            buffer.removeSubrange(buffer.startIndex...newline)
            if line == "START" { started = true }
            let words = line.split(separator: " ")
            guard words.count == 5, words[0] == "RANGE", let stream = UInt64(words[1]), let end = UInt64(words[2]),
                  let acknowledged = UInt64(words[4]) else { continue }
            ranges[stream] = ReportedRange(end: end, sealed: words[3] == "1", acknowledged: acknowledged)
        }
    }

    var snapshot: (started: Bool, ranges: [UInt64: ReportedRange]) {
        lock.lock()
        defer { lock.unlock() }
        return (started, ranges)
    }
}

/// The configuration of the child's "many" mode.
func manyRangesConfiguration(_ directory: String) -> StoreConfiguration {
    StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 1 << 20, maxFlushBytes: 64 << 10,
                                             maxSpareSegments: 2),
                       checkpointIntervalBytes: 2 << 20)
}

@Suite(.serialized) struct ManyRangesTests {
    /// A store holding tens of thousands of small ranges (as thousands of short writers leave them) is killed with
    /// SIGKILL while it makes more, then recovered, then closed and opened again: after each open, every range the
    /// child reported durable is there with its end, its seal and its acknowledged end, and every record reads back
    /// byte for byte.
    @Test func tensOfThousandsOfRangesSurviveSIGKILLAndRestart() async throws {
        let child = crashChildPath()
        try #require(FileManager.default.isExecutableFile(atPath: child),
                     "build the crash child first (swift build builds it): \(child)")
        try await withDirectory { directory in
            let wanted = 30_000
            let process = Process()
            process.executableURL = URL(fileURLWithPath: child)
            process.arguments = [directory, "many"]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            let lines = RangeCollector()
            output.fileHandleForReading.readabilityHandler = { handle in lines.feed(handle.availableData) }
            try process.run()
            // However slow the machine, wait until the child has made enough ranges (generous bound).
            let deadline = Date().addingTimeInterval(600)
            while lines.snapshot.ranges.count < wanted && Date() < deadline && process.isRunning {
                try await Task.sleep(for: .milliseconds(20))
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            output.fileHandleForReading.readabilityHandler = nil
            lines.feed(output.fileHandleForReading.readDataToEndOfFile())
            let reported = lines.snapshot.ranges
            try #require(reported.count >= wanted, "the child reported only \(reported.count) ranges")

            for round in ["after SIGKILL", "after a clean close"] {
                let reactor = try Reactor(configuration: .testing(shards: 1))
                defer { reactor.shutdown() }
                let problems = try await reactor.run(on: 0) { context -> [String] in
                    let store = try await ShardStore.open(manyRangesConfiguration(directory), on: context)
                    var problems: [String] = []
                    for (stream, range) in reported.sorted(by: { $0.key < $1.key }) {
                        let key = RangeKey(streamID: stream, index: 0)
                        guard let description = store.describe(key) else {
                            problems.append("\(key) is gone")
                            continue
                        }
                        if description.confirmedEnd != range.end {
                            problems.append("\(key): end \(description.confirmedEnd), reported \(range.end)")
                        }
                        if (description.sealedEnd != nil) != range.sealed || (range.sealed && description.sealedEnd != range.end) {
                            problems.append("\(key): sealed at \(String(describing: description.sealedEnd)), reported \(range)")
                        }
                        if description.acknowledgedEnd < range.acknowledged {
                            problems.append("\(key): acknowledged end \(description.acknowledgedEnd) < \(range.acknowledged)")
                        }
                        let batches = try await store.read(key, from: stream * 10, maxBytes: 1 << 20)
                        var expected = stream * 10
                        for bytes in batches {
                            bytes.withUnsafeBytes { raw in
                                guard let view = try? RecordBatchView(validating: raw) else {
                                    problems.append("\(key): a batch fails validation")
                                    return
                                }
                                for record in view.records {
                                    if record.offset != expected || !record.value.elementsEqual(crashTestValue(record.offset)) {
                                        problems.append("\(key): record \(record.offset) altered or out of place")
                                    }
                                    expected += 1
                                }
                            }
                        }
                        if expected != range.end { problems.append("\(key): read up to \(expected), end \(range.end)") }
                        if problems.count > 20 { break }
                    }
                    await store.close()
                    return problems
                }
                #expect(problems.isEmpty, "\(round): \(problems.prefix(10))")
            }
        }
    }
}
