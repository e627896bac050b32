import Foundation
import Platform
import Reactor
import Records
import Synchronization
import Testing
@testable import Store

/// Runs a command, returning its exit status.
@discardableResult
func shell(_ arguments: [String]) throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}

@Suite(.serialized) struct DiskFullTests {
    /// A real full disk: a small ext4 file system on a loop device. The append that cannot be stored fails with the
    /// disk's errno, and the failure is reported to the reactor as fatal (what makes `elastic-stream` exit);
    /// everything acknowledged before it reads back intact after a restart.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkfs.ext4"),
                   "needs root for a loop mount"))
    func aFullDiskFailsTheAppendAndKeepsAcknowledgedData() async throws {
        try await withDirectory { scratch in
            let image = "\(scratch)/disk.img"
            let mountPoint = "\(scratch)/mnt"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            FileManager.default.createFile(atPath: image, contents: nil)
            try FileHandle(forWritingTo: URL(fileURLWithPath: image)).truncate(atOffset: 8 << 20)
            try #require(try shell(["mkfs.ext4", "-q", "-F", image]) == 0, "mkfs.ext4 failed")
            try #require(try shell(["mount", "-o", "loop", image, mountPoint]) == 0, "loop mount failed")
            defer { _ = try? shell(["umount", mountPoint]) }

            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let fatal = Mutex<[String]>([])
            reactor.onFatalFailure { reason in fatal.withLock { $0.append(reason) } }
            let key = RangeKey(streamID: 3, index: 0)
            let configuration = StoreConfiguration(
                wal: WALConfiguration(directory: "\(mountPoint)/wal", segmentSizeBytes: 1 << 20,
                                      maxFlushBytes: 64 << 10))
            let (acknowledged, failure) = try await reactor.run(on: 0) { context -> (UInt64, StoreError?) in
                let store = try await ShardStore.open(configuration, on: context)
                try await store.createRange(key, start: 0)
                var offset: UInt64 = 0
                while offset < 10_000 {
                    let bytes = try RecordBatch(streamID: 3, rangeIndex: 0, baseOffset: offset, baseTimestamp: 0,
                                                records: (0..<8).map { _ in
                                                    Record(timestamp: 0, value: [UInt8](repeating: 0x42, count: 4000))
                                                }).encoded()
                    do {
                        let outcome = try await withBytes(bytes) { raw in
                            try await store.append(try RecordBatchView(validating: raw))
                        }
                        guard case .committed(let end) = outcome else { break }
                        offset = end
                    } catch let error as StoreError {
                        await store.close()
                        return (offset, error)
                    }
                }
                await store.close()
                return (offset, nil)
            }
            try #require(failure != nil, "8 MiB filled without an error")
            guard case .io(let io) = failure! else {
                Issue.record("expected an I/O error, got \(failure!)")
                return
            }
            #expect(io.errno == ENOSPC, "\(io)")
            #expect(acknowledged > 0)
            let reported = fatal.withLock { $0 }
            #expect(reported.count == 1 && reported.first?.contains("ENOSPC") == true,
                    "the WAL's failure was reported as fatal once, naming the error: \(reported)")

            let readBack = try await reactor.run(on: 0) { context -> (UInt64, Bool) in
                let store = try await ShardStore.open(configuration, on: context)
                let end = store.describe(key)?.confirmedEnd ?? 0
                var offset: UInt64 = 0
                var intact = true
                while offset < end {
                    let batches = try await store.read(key, from: offset, maxBytes: 1 << 20)
                    if batches.isEmpty { intact = false; break }
                    for bytes in batches {
                        bytes.withUnsafeBytes { raw in
                            guard let view = try? RecordBatchView(validating: raw), view.baseOffset == offset,
                                  view.records.allSatisfy({ $0.value.allSatisfy { $0 == 0x42 } })
                            else { intact = false; return }
                            offset = view.endOffset
                        }
                    }
                }
                await store.close()
                return (end, intact)
            }
            #expect(readBack.0 >= acknowledged)
            #expect(readBack.1)
        }
    }
}
