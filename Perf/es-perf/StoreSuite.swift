import CSupport
import Foundation
import Platform
import Reactor
import Records
import Store

/// `es-perf store`: the shard-local store's appends, reads and recovery, beside fio on the same disk in the same run.
struct StoreSuite: FigureSuite {
    let options: PerfOptions

    let suiteName = "store"

    func run() async throws {
        guard Fio.available() else { throw PerfError("fio is not installed (apt-get install fio)") }
        let cpus = allowedCPUs()
        let reactor = try Reactor(configuration: ReactorConfiguration(
            cpus: [cpus[0]], pinThreads: options.pin, pollDuration: .milliseconds(2), stallThreshold: nil,
            bufferCount: 8))
        defer { reactor.shutdown() }
        let root = "\(options.directory)/es-perf-store-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let total = options.quick ? 8 << 20 : 64 << 20

        let only = options.only
        // QD1: 4 KiB appends one at a time. The value is sized so that the WAL entry (24-byte header, batch header,
        // record header, value) is exactly 4 KiB, the block fio writes.
        let qd1 = try await appendLatencies(reactor, directory: "\(root)/qd1", appenders: 1,
                                            valueBytes: valueBytes(forEntryBytes: 4096),
                                            totalBytes: total)
        let fioQD1 = try Fio.writeWithFdatasync(file: "\(root)/fio-qd1", sizeBytes: total, blockBytes: 4096)
        for (label, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
            emit("append_qd1_\(label)_us", percentile(qd1.latencies, p) / 1000, "us", .lower,
                 "fio 4k write+fdatasync, QD1: write lat + fdatasync lat \(label)",
                 (fioQD1.write[p] ?? .nan) + (fioQD1.sync[p] ?? .nan))
        }

        if only == nil || only == "qd1" {
            try await qd1Figures(reactor, root: root, total: total, qd1: qd1)
        }
        if only == nil || only == "throughput" { try await throughputFigures(reactor, root: root, total: total, qd1: qd1) }
        if only == nil || only == "read" { try await readFigures(reactor, root: root, total: total) }
        if only == nil || only == "recovery" { try await recoveryFigures(reactor, root: root, total: total, qd1: qd1) }
        if only == nil || only == "ranges" { try await manyRangesFigures(reactor, root: root) }
    }

    /// A store holding 100,000 small ranges (10,000 with `--quick`), as thousands of short writers leave them: one
    /// batch of 100 bytes each, half sealed, half open with an acknowledged end. Restart time per 10,000 ranges
    /// after a clean close (the closing checkpoint is loaded, nothing replayed) and after a crash (the last
    /// checkpoint is loaded and the log after it replayed); baseline: reading the same bytes (checkpoint and
    /// replayed log) with fio.
    private func manyRangesFigures(_ reactor: Reactor, root: String) async throws {
        let count = options.quick ? 10_000 : 100_000
        for crash in [false, true] {
            let directory = "\(root)/ranges-\(crash ? "crash" : "clean")"
            let configuration = configuration(directory)
            try await reactor.run(on: 0) { context in
                let store = ShardBound(try await ShardStore.open(configuration, on: context))
                let value = [UInt8](repeating: 9, count: 100)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for worker in 0..<256 {
                        group.addTask {
                            var stream = worker
                            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
                            defer { buffer.deallocate() }
                            while stream < count {
                                let key = RangeKey(streamID: UInt64(stream + 1), index: 0)
                                try await store.value.createRange(key, start: 0)
                                var builder = try RecordBatchBuilder(into: buffer, streamID: key.streamID, rangeIndex: 0,
                                                                     baseOffset: 0, baseTimestamp: 0)
                                try value.withUnsafeBytes { try builder.append(timestamp: 0, value: $0) }
                                let length = builder.finish()
                                let view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: buffer[..<length]))
                                _ = try await store.value.append(view, acknowledged: stream % 2 == 0 ? 0 : 1)
                                if stream % 2 == 0 { _ = try await store.value.seal(key, at: 1) }
                                stream += 256
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                if !crash { await store.value.close() }
            }
            let start = cs_monotonic_ns()
            let (ranges, replayed, checkpointBytes) = try await reactor.run(on: 0) { context -> (Int, UInt64, Int) in
                let store = try await ShardStore.open(configuration, on: context)
                let ranges = store.rangeKeys.count
                let replayed = store.recoveredBytes
                await store.close()
                let sizes = (0..<2).compactMap {
                    (try? FileManager.default.attributesOfItem(atPath: "\(directory)/checkpoint-\($0).ckpt")[.size]) as? Int
                }
                return (ranges, replayed, sizes.max() ?? 0)
            }
            let seconds = Double(cs_monotonic_ns() - start) / 1e9
            guard ranges == count else { throw PerfError("\(ranges) ranges after the restart, \(count) made") }
            let bytes = max(4096, checkpointBytes + Int(replayed))
            let fio = try Fio.sequentialRead(file: "\(root)/fio-ranges", sizeBytes: (bytes + 4095) / 4096 * 4096,
                                             blockBytes: 131072)
            let per = 10_000 / Double(count)
            emit("restart_\(crash ? "crash" : "clean")_ms_per_10k_ranges", seconds * per * 1000, "ms", .lower,
                 "fio reading the same \(bytes >> 10) KiB (checkpoint + replayed log), per 10k ranges",
                 Double(bytes) / fio * per * 1000)
        }
    }

    private func qd1Figures(_ reactor: Reactor, root: String, total: Int, qd1: AppendRun) async throws {
        // The other durability mode: one RWF_DSYNC write per flush instead of a write and an fdatasync.
        let dsync = try await appendLatencies(reactor, directory: "\(root)/qd1-dsync", appenders: 1,
                                              valueBytes: valueBytes(forEntryBytes: 4096),
                                              totalBytes: total / 4, durability: .dsyncWrite)
        emit("append_qd1_dsync_p50_us", percentile(dsync.latencies, 50) / 1000, "us", .lower,
             "the same appends with write + fdatasync (the default)", percentile(qd1.latencies, 50) / 1000)
        emit("append_qd1_dsync_p99_us", percentile(dsync.latencies, 99) / 1000, "us", .lower,
             "the same appends with write + fdatasync (the default)", percentile(qd1.latencies, 99) / 1000)

    }

    private func throughputFigures(_ reactor: Reactor, root: String, total: Int, qd1: AppendRun) async throws {
        // 64 appenders, 4 KiB and 64 KiB: group commit against fio at the same block size and queue depth. Two
        // states of the disk: a new store whose segments are being created (against fio writing a new file), and a
        // store in its steady state, reusing segments it has written before (against fio overwriting its file).
        for (label, block) in [("4k", 4096), ("64k", 65536)] {
            let size = total * (label == "4k" ? 1 : 4)
            let value = valueBytes(forEntryBytes: block)
            let fresh = try await appendLatencies(reactor, directory: "\(root)/c\(label)", appenders: 64,
                                                  valueBytes: value, totalBytes: size)
            let fioFresh = try Fio.writeWithFdatasync(file: "\(root)/fio-\(label)", sizeBytes: size, blockBytes: block,
                                                      queueDepth: 64)
            let steady = try await appendLatencies(reactor, directory: "\(root)/s\(label)", appenders: 64,
                                                   valueBytes: value, totalBytes: size, warmUp: true)
            let fioOverwrite = try Fio.writeWithFdatasync(file: "\(root)/fio-\(label)", sizeBytes: size,
                                                          blockBytes: block, queueDepth: 64)
            emit("append_throughput_\(label)_mib_s", steady.bytesPerSecond / 1_048_576, "MiB/s", .higher,
                 "fio \(label) write+fdatasync, QD64, overwriting its file (both in steady state)",
                 fioOverwrite.bandwidth / 1_048_576)
            emit("append_throughput_\(label)_new_store_mib_s", fresh.bytesPerSecond / 1_048_576, "MiB/s", .higher,
                 "fio \(label) write+fdatasync, QD64, writing a new file", fioFresh.bandwidth / 1_048_576)
            if label == "4k" {
                emit("append_concurrent_p999_us", percentile(steady.latencies, 99.9) / 1000, "us", .lower,
                     "the QD1 append p99.9 of this run", percentile(qd1.latencies, 99.9) / 1000)
            }
        }
    }

    private func readFigures(_ reactor: Reactor, root: String, total: Int) async throws {
        // Reads of what the QD1 run wrote: from the cache, then from disk after a restart.
        let reads = try await readBack(reactor, directory: "\(root)/qd1")
        let fioRead = try Fio.sequentialRead(file: "\(root)/fio-qd1", sizeBytes: total, blockBytes: 131072)
        emit("read_hot_gib_s", reads.hot / 1_073_741_824, "GiB/s", .higher, "fio sequential O_DIRECT read, 128k, QD8",
             fioRead / 1_073_741_824)
        emit("read_warm_gib_s", reads.warm / 1_073_741_824, "GiB/s", .higher,
             "fio sequential O_DIRECT read, 128k, QD8", fioRead / 1_073_741_824)

    }

    private func recoveryFigures(_ reactor: Reactor, root: String, total: Int, qd1: AppendRun) async throws {
        // Recovery after a crash (the store dropped without close, so no closing checkpoint). First with checkpoints
        // only at open: the whole log is replayed, the scan rate. Then with the default interval, over four times as
        // much log: only the log after the last checkpoint is replayed.
        let crashTotal = total * 4
        _ = try await appendLatencies(reactor, directory: "\(root)/rec-full", appenders: 64, valueBytes: 4000,
                                             totalBytes: crashTotal, checkpointInterval: 0, crash: true)
        let fullRecovery = try await recover(reactor, directory: "\(root)/rec-full", checkpointInterval: 0)
        let fioRecovery = try Fio.sequentialRead(file: "\(root)/fio-rec", sizeBytes: crashTotal, blockBytes: 131072)
        emit("recovery_scan_s_per_gib", fullRecovery.seconds / (Double(fullRecovery.replayed) / 1_073_741_824),
             "s/GiB", .lower, "reading the same bytes with fio (sequential, 128k, QD8)", 1_073_741_824 / fioRecovery)
        let interval = 16 << 20
        _ = try await appendLatencies(reactor, directory: "\(root)/rec-ckpt", appenders: 64, valueBytes: 4000,
                                      totalBytes: crashTotal, checkpointInterval: interval, crash: true)
        let checkpointed = try await recover(reactor, directory: "\(root)/rec-ckpt", checkpointInterval: interval)
        emit("recovery_checkpointed_s", checkpointed.seconds, "s", .lower,
             "replaying the whole \(crashTotal >> 20) MiB log (checkpoints off), same run", fullRecovery.seconds)
        emit("recovery_checkpointed_replayed_mib", Double(checkpointed.replayed) / 1_048_576, "MiB", .lower,
             "log written, MiB", Double(checkpointed.walBytes) / 1_048_576)
        emit("checkpoint_encode_us", Double(checkpointed.encode.components.attoseconds) / 1e12
                 + Double(checkpointed.encode.components.seconds) * 1e6, "us", .lower,
             "the QD1 append p99.9 of this run (encoding runs on the shard)", percentile(qd1.latencies, 99.9) / 1000)
    }

    /// The value size that makes a one-record batch's WAL entry exactly `entryBytes` long.
    private func valueBytes(forEntryBytes entryBytes: Int) -> Int {
        let probe = 1000
        let encoded = (try? RecordBatch(streamID: 0, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0,
                                        records: [Record(timestamp: 0, value: [UInt8](repeating: 0, count: probe))])
            .encoded().count) ?? probe
        let overhead = encoded - probe + WALEntryLayout.headerSize
        // A longer value also lengthens the record's varint length prefix; probe once more at the target.
        let value = entryBytes - overhead
        let check = (try? RecordBatch(streamID: 0, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0,
                                      records: [Record(timestamp: 0, value: [UInt8](repeating: 0, count: value))])
            .encoded().count) ?? value
        return value - (check + WALEntryLayout.headerSize - entryBytes)
    }

    private func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = cs_allowed_cpus(&cpus, 1024)
        return cpus.prefix(Int(max(0, n))).map(Int.init)
    }

    struct AppendRun: Sendable {
        var latencies: [UInt64]
        var bytesPerSecond: Double
    }

    func configuration(_ directory: String, durability: WALConfiguration.Durability = .fdatasync,
                               checkpointInterval: Int = 64 << 20) -> StoreConfiguration
    {
        StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 64 << 20,
                                                 maxFlushBytes: 1 << 20, durability: durability,
                                                 maxSpareSegments: 16),
                           cacheBytes: 256 << 20, checkpointIntervalBytes: checkpointInterval)
    }

    /// `appenders` tasks, each appending one-record batches of `valueBytes` to its own range, until `totalBytes`.
    /// `appenders` tasks, each appending one-record batches of `valueBytes` to its own range, until `totalBytes`.
    /// With `warmUp`, the same amount is appended, trimmed and checkpointed away first, untimed, so that the timed
    /// appends reuse segments (the steady state of a store with retention).
    func appendLatencies(_ reactor: Reactor, directory: String, appenders: Int, valueBytes: Int,
                                 totalBytes: Int, durability: WALConfiguration.Durability = .fdatasync,
                                 checkpointInterval: Int = 64 << 20, crash: Bool = false, warmUp: Bool = false)
        async throws -> AppendRun
    {
        let configuration = configuration(directory, durability: durability, checkpointInterval: checkpointInterval)
        return try await reactor.run(on: 0) { context -> AppendRun in
            let store = ShardBound(try await ShardStore.open(configuration, on: context))
            let perAppender = max(1, totalBytes / valueBytes / appenders)
            for a in 0..<appenders { try await store.value.createRange(RangeKey(streamID: UInt64(a), index: 0), start: 0) }
            var base: UInt64 = 0
            if warmUp {
                _ = try await appendPass(store, appenders: appenders, perAppender: perAppender, valueBytes: valueBytes,
                                         base: 0)
                base = UInt64(perAppender)
                for a in 0..<appenders { try await store.value.trim(RangeKey(streamID: UInt64(a), index: 0), below: base) }
                // Segments are reused below the older of the two checkpoints: two of them.
                try await store.value.checkpoint()
                try await store.value.checkpoint()
                try await store.value.prepareAhead()
            }
            let (latencies, elapsed) = try await appendPass(store, appenders: appenders, perAppender: perAppender,
                                                            valueBytes: valueBytes, base: base)
            // A crash: dropped without close, so without the closing checkpoint.
            if !crash { await store.value.close() }
            return AppendRun(latencies: latencies.sorted(),
                             bytesPerSecond: Double(perAppender * appenders * valueBytes) / elapsed)
        }
    }

    /// Every appender's batches are built before the clock starts (building a batch is the client's work); what is
    /// timed is what a range server does with one it receives: validate it and append it. Returns the latencies and
    /// the elapsed time.
    func appendPass(_ store: ShardBound<ShardStore>, appenders: Int, perAppender: Int, valueBytes: Int,
                            base: UInt64) async throws -> (latencies: [UInt64], seconds: Double) {
        let stride = valueBytes + 256
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: stride * perAppender * appenders, alignment: 8)
        defer { buffer.deallocate() }
        var lengths = [Int](repeating: 0, count: perAppender * appenders)
        for a in 0..<appenders {
            let value = [UInt8](repeating: UInt8(a & 0xFF), count: valueBytes)
            for i in 0..<perAppender {
                let n = a * perAppender + i
                let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[(n * stride)..<((n + 1) * stride)])
                var builder = try RecordBatchBuilder(into: slot, streamID: UInt64(a), rangeIndex: 0,
                                                     baseOffset: base + UInt64(i), baseTimestamp: 0)
                try value.withUnsafeBytes { try builder.append(timestamp: 0, value: $0) }
                lengths[n] = builder.finish()
            }
        }
        let built = ShardBound(UnsafeRawBufferPointer(buffer))
        let sizes = lengths
        let start = cs_monotonic_ns()
        let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for a in 0..<appenders {
                group.addTask {
                    var samples: [UInt64] = []
                    samples.reserveCapacity(perAppender)
                    for i in 0..<perAppender {
                        let n = a * perAppender + i
                        let t0 = cs_monotonic_ns()
                        let bytes = UnsafeRawBufferPointer(rebasing: built.value[(n * stride)..<(n * stride + sizes[n])])
                        let outcome = try await store.value.append(try RecordBatchView(validating: bytes))
                        samples.append(cs_monotonic_ns() - t0)
                        guard case .committed = outcome else { throw PerfError("append answered \(outcome)") }
                    }
                    return samples
                }
            }
            return try await group.reduce(into: [UInt64]()) { $0 += $1 }
        }
        return (latencies, Double(cs_monotonic_ns() - start) / 1e9)
    }

    private struct ReadRun: Sendable {
        var hot: Double
        var warm: Double
    }

    private struct RecoveryRun: Sendable {
        var seconds: Double
        var replayed: UInt64
        var walBytes: UInt64
        var encode: Duration
    }

    /// Opens the store in `directory` (after a crash): how long recovery took and how much log it replayed.
    private func recover(_ reactor: Reactor, directory: String, checkpointInterval: Int) async throws -> RecoveryRun {
        let configuration = configuration(directory, checkpointInterval: checkpointInterval)
        return try await reactor.run(on: 0) { context -> RecoveryRun in
            let start = cs_monotonic_ns()
            let store = try await ShardStore.open(configuration, on: context)
            let seconds = Double(cs_monotonic_ns() - start) / 1e9
            let run = RecoveryRun(seconds: seconds, replayed: store.recoveredBytes, walBytes: store.walBytes,
                                  encode: store.lastCheckpointEncode)
            await store.close()
            return run
        }
    }

    private func readBack(_ reactor: Reactor, directory: String) async throws -> ReadRun {
        let configuration = configuration(directory)
        let key = RangeKey(streamID: 0, index: 0)
        // Warm reads on a fresh store: its cache is empty.
        return try await reactor.run(on: 0) { context -> ReadRun in
            let store = ShardBound(try await ShardStore.open(configuration, on: context))
            let end = store.value.describe(key)?.confirmedEnd ?? 0
            func readAll() async throws -> Int {
                var offset: UInt64 = 0
                var bytes = 0
                while offset < end {
                    let batches = try await store.value.read(key, from: offset, maxBytes: 1 << 20)
                    for batch in batches {
                        bytes += batch.count
                        offset += 1
                    }
                }
                return bytes
            }
            var start = cs_monotonic_ns()
            let warmBytes = try await readAll()
            let warm = Double(warmBytes) / (Double(cs_monotonic_ns() - start) / 1e9)
            // The warm read filled nothing; append-time caching is what makes reads hot. Read a tail that was just
            // appended: append the same amount again (cached), then read it.
            await store.value.close()
            let hotStore = ShardBound(try await ShardStore.open(configuration, on: context))
            let hotKey = RangeKey(streamID: 99, index: 0)
            try await hotStore.value.createRange(hotKey, start: 0)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
            defer { buffer.deallocate() }
            let value = [UInt8](repeating: 7, count: 4000)
            let count = min(Int(end), 4096)
            for i in 0..<count {
                var builder = try RecordBatchBuilder(into: buffer, streamID: 99, rangeIndex: 0, baseOffset: UInt64(i),
                                                     baseTimestamp: 0)
                try value.withUnsafeBytes { try builder.append(timestamp: 0, value: $0) }
                let length = builder.finish()
                _ = try await hotStore.value.append(try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: buffer[..<length])))
            }
            start = cs_monotonic_ns()
            var hotBytes = 0
            for _ in 0..<10 {
                var offset: UInt64 = 0
                while offset < UInt64(count) {
                    let batches = try await hotStore.value.read(hotKey, from: offset, maxBytes: 1 << 20)
                    for batch in batches { hotBytes += batch.count }
                    offset += UInt64(batches.count)
                }
            }
            let hot = Double(hotBytes) / (Double(cs_monotonic_ns() - start) / 1e9)
            await hotStore.value.close()
            return ReadRun(hot: hot, warm: warm)
        }
    }
}
