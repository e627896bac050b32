import CSupport
import Foundation
import Platform
import Reactor
import Records
import Store

/// `es-perf store`: the shard-local store's appends, reads and recovery, beside fio on the same disk in the same run.
struct StoreSuite {
    let options: PerfOptions

    private func emit(_ name: String, _ value: Double, _ unit: String, _ better: Figure.Better, _ baseline: String,
                      _ baselineValue: Double) {
        Figure(suite: "store", name: name, value: value, unit: unit, better: better, baseline: baseline,
               baselineValue: baselineValue).print()
    }

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

        // QD1: 4 KiB appends one at a time.
        let qd1 = try await appendLatencies(reactor, directory: "\(root)/qd1", appenders: 1, valueBytes: 4000,
                                            totalBytes: total)
        let fioQD1 = try Fio.writeWithFdatasync(file: "\(root)/fio-qd1", sizeBytes: total, blockBytes: 4096)
        for (label, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
            emit("append_qd1_\(label)_us", percentile(qd1.latencies, p) / 1000, "us", .lower,
                 "fio 4k write+fdatasync, QD1: write lat + fdatasync lat \(label)",
                 (fioQD1.write[p] ?? .nan) + (fioQD1.sync[p] ?? .nan))
        }

        // The other durability mode: one RWF_DSYNC write per flush instead of a write and an fdatasync.
        let dsync = try await appendLatencies(reactor, directory: "\(root)/qd1-dsync", appenders: 1, valueBytes: 4000,
                                              totalBytes: total / 4, durability: .dsyncWrite)
        emit("append_qd1_dsync_p50_us", percentile(dsync.latencies, 50) / 1000, "us", .lower,
             "the same appends with write + fdatasync (the default)", percentile(qd1.latencies, 50) / 1000)
        emit("append_qd1_dsync_p99_us", percentile(dsync.latencies, 99) / 1000, "us", .lower,
             "the same appends with write + fdatasync (the default)", percentile(qd1.latencies, 99) / 1000)

        // 64 appenders, 4 KiB and 64 KiB: group commit against fio at the same block size and queue depth.
        for (label, valueBytes, block) in [("4k", 4000, 4096), ("64k", 65000, 65536)] {
            let many = try await appendLatencies(reactor, directory: "\(root)/c\(label)", appenders: 64,
                                                 valueBytes: valueBytes, totalBytes: total * (label == "4k" ? 1 : 4))
            let fio = try Fio.writeWithFdatasync(file: "\(root)/fio-\(label)", sizeBytes: total * (label == "4k" ? 1 : 4),
                                                 blockBytes: block, queueDepth: 64)
            emit("append_throughput_\(label)_mib_s", many.bytesPerSecond / 1_048_576, "MiB/s", .higher,
                 "fio \(label) write+fdatasync, QD64", fio.bandwidth / 1_048_576)
            if label == "4k" {
                emit("append_concurrent_p999_us", percentile(many.latencies, 99.9) / 1000, "us", .lower,
                     "the QD1 append p99.9 of this run", percentile(qd1.latencies, 99.9) / 1000)
            }
        }

        // Reads of what the QD1 run wrote: from the cache, then from disk after a restart; and recovery time.
        let reads = try await readAndRecover(reactor, directory: "\(root)/qd1")
        let fioRead = try Fio.sequentialRead(file: "\(root)/fio-qd1", sizeBytes: total, blockBytes: 131072)
        emit("read_hot_gib_s", reads.hot / 1_073_741_824, "GiB/s", .higher, "fio sequential O_DIRECT read, 128k, QD8",
             fioRead / 1_073_741_824)
        emit("read_warm_gib_s", reads.warm / 1_073_741_824, "GiB/s", .higher,
             "fio sequential O_DIRECT read, 128k, QD8", fioRead / 1_073_741_824)
        emit("recovery_s_per_gib", reads.recoverySecondsPerGiB, "s/GiB", .lower,
             "reading the same bytes with fio (sequential, 128k, QD8)", 1_073_741_824 / fioRead)
    }

    private func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = cs_allowed_cpus(&cpus, 1024)
        return cpus.prefix(Int(max(0, n))).map(Int.init)
    }

    private struct AppendRun: Sendable {
        var latencies: [UInt64]
        var bytesPerSecond: Double
    }

    private func configuration(_ directory: String, durability: WALConfiguration.Durability = .fdatasync)
        -> StoreConfiguration
    {
        StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 64 << 20,
                                                 maxFlushBytes: 1 << 20, durability: durability),
                           cacheBytes: 256 << 20)
    }

    /// `appenders` tasks, each appending one-record batches of `valueBytes` to its own range, until `totalBytes`.
    private func appendLatencies(_ reactor: Reactor, directory: String, appenders: Int, valueBytes: Int,
                                 totalBytes: Int, durability: WALConfiguration.Durability = .fdatasync)
        async throws -> AppendRun
    {
        let configuration = configuration(directory, durability: durability)
        return try await reactor.run(on: 0) { context -> AppendRun in
            let store = ShardBound(try await ShardStore.open(configuration, on: context))
            let perAppender = max(1, totalBytes / valueBytes / appenders)
            for a in 0..<appenders { try await store.value.createRange(RangeKey(streamID: UInt64(a), index: 0), start: 0) }
            let start = cs_monotonic_ns()
            let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
                for a in 0..<appenders {
                    group.addTask {
                        let key = RangeKey(streamID: UInt64(a), index: 0)
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: valueBytes + 256, alignment: 8)
                        defer { buffer.deallocate() }
                        let value = [UInt8](repeating: UInt8(a & 0xFF), count: valueBytes)
                        var samples: [UInt64] = []
                        samples.reserveCapacity(perAppender)
                        for i in 0..<perAppender {
                            var builder = try RecordBatchBuilder(into: buffer, streamID: key.streamID, rangeIndex: 0,
                                                                 baseOffset: UInt64(i), baseTimestamp: 0)
                            try value.withUnsafeBytes { try builder.append(timestamp: 0, value: $0) }
                            let length = builder.finish()
                            let view = try RecordBatchView(validating: UnsafeRawBufferPointer(rebasing: buffer[..<length]))
                            let t0 = cs_monotonic_ns()
                            let outcome = try await store.value.append(view)
                            samples.append(cs_monotonic_ns() - t0)
                            guard case .committed = outcome else { throw PerfError("append answered \(outcome)") }
                        }
                        return samples
                    }
                }
                return try await group.reduce(into: [UInt64]()) { $0 += $1 }
            }
            let elapsed = Double(cs_monotonic_ns() - start) / 1e9
            await store.value.close()
            return AppendRun(latencies: latencies.sorted(),
                             bytesPerSecond: Double(perAppender * appenders * valueBytes) / elapsed)
        }
    }

    private struct ReadRun: Sendable {
        var hot: Double
        var warm: Double
        var recoverySecondsPerGiB: Double
    }

    private func readAndRecover(_ reactor: Reactor, directory: String) async throws -> ReadRun {
        let configuration = configuration(directory)
        let key = RangeKey(streamID: 0, index: 0)
        // Recovery (open) and warm reads on a fresh store: its cache is empty.
        return try await reactor.run(on: 0) { context -> ReadRun in
            var start = cs_monotonic_ns()
            let store = ShardBound(try await ShardStore.open(configuration, on: context))
            let recovered = Double(cs_monotonic_ns() - start) / 1e9
            let walBytes = Double(store.value.walBytes)
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
            start = cs_monotonic_ns()
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
            return ReadRun(hot: hot, warm: warm, recoverySecondsPerGiB: recovered / (walBytes / 1_073_741_824))
        }
    }
}
