import CSupport
import Client
import Foundation
import PlacementDriver
import Platform
import Reactor
import Records
import Store

/// `es-perf cluster`: appends through the client SDK to `elastic-stream` nodes on loopback (three nodes, 3 replicas
/// acknowledged at 2; and one node, 1 replica), for 1 KiB and 64 KiB records, one stream and 64 streams; beside, in
/// the same run, the store's own QD1 appends of the same size (in process, no network, no replication) and Redis
/// streams (XADD through redis-benchmark) with `appendfsync always`.
struct ClusterSuite: FigureSuite {
    let options: PerfOptions

    let suiteName = "cluster"

    struct Load: Sendable {
        var latencies: [UInt64] = []
        var recordsPerSecond = 0.0
    }

    func run() async throws {
        let server = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("elastic-stream").path
        guard FileManager.default.isExecutableFile(atPath: server) else {
            throw PerfError("\(server) is missing: swift build -c release --product elastic-stream")
        }
        guard Redis.available() else {
            throw PerfError("redis-server and redis-benchmark are not installed (apt-get install redis-server)")
        }
        let root = "\(options.directory)/es-perf-cluster-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let reactor = try Reactor(configuration: ReactorConfiguration(
            cpus: [0], pinThreads: false, pollDuration: .microseconds(20), stallThreshold: nil, bufferCount: 8))
        defer { reactor.shutdown() }
        let quick = options.quick
        // The servers' WAL durability (their default unless ES_WAL_DURABILITY says otherwise); the store baselines
        // use the same.
        let durability = WALConfiguration.Durability(
            rawValue: ProcessInfo.processInfo.environment["ES_WAL_DURABILITY"] ?? "dsync-write") ?? .dsyncWrite
        let sizes = options.only.map { $0 == "64k" ? [65536] : [1024] } ?? [1024, 65536]

        for size in sizes {
            let label = size == 1024 ? "1k" : "64k"
            let qd1Count = size == 1024 ? (quick ? 500 : 3000) : (quick ? 200 : 1000)
            let bulkCount = size == 1024 ? (quick ? 4000 : 30000) : (quick ? 600 : 3000)

            // The store alone, in this process: the floor a replica's append stands on.
            let store = try await StoreSuite(options: options).appendLatencies(
                reactor, directory: "\(root)/store-\(label)", appenders: 1, valueBytes: size,
                totalBytes: qd1Count * size, durability: durability)

            // Three stores on this disk, in this process: one append to each at once, timed to the second to finish
            // (what a 3-replica, ack-2 append waits for, without the network and the other processes).
            let triple = try await Self.secondOfThree(reactor, suite: StoreSuite(options: options),
                                                      root: "\(root)/triple-\(label)", valueBytes: size, rounds: qd1Count,
                                                      durability: durability)

            var three = (qd1: Load(), one: Load(), many: Load())
            var single = (qd1: Load(), one: Load(), many: Load())
            for (nodes, replicas) in [(3, 3), (1, 1)] {
                let group = try NodeGroup(binary: server, directory: "\(root)/nodes-\(label)-\(nodes)", nodes: nodes,
                                          durability: durability)
                defer { group.stopAll() }
                let addresses = group.pdAddresses
                let result = try await reactor.run(on: 0) { context in
                    try await Self.measure(addresses, context: context, nodes: nodes, replicas: replicas, size: size,
                                           qd1Count: qd1Count, bulkCount: bulkCount)
                }
                if replicas == 3 { three = result } else { single = result }
                group.stopAll()
            }

            let redisQD1 = try Redis.xadd(directory: "\(root)/redis-\(label)", valueBytes: size, clients: 1,
                                          requests: qd1Count)
            let redisBulk = try Redis.xadd(directory: "\(root)/redis-bulk-\(label)", valueBytes: size, clients: 64,
                                           requests: bulkCount)

            for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
                emit("append_\(label)_3r_qd1_\(name)_us", percentile(three.qd1.latencies, p) / 1000, "us", .lower,
                     "the store's own QD1 append of \(size) B, in process (\(durability.rawValue)), \(name)",
                     percentile(store.latencies, p) / 1000)
                emit("append_\(label)_1r_qd1_\(name)_us", percentile(single.qd1.latencies, p) / 1000, "us", .lower,
                     "the store's own QD1 append of \(size) B, in process (\(durability.rawValue)), \(name)",
                     percentile(store.latencies, p) / 1000)
            }
            emit("append_\(label)_3r_qd1_p999_vs_3stores_us", percentile(three.qd1.latencies, 99.9) / 1000, "us", .lower,
                 "3 stores on the same disk in one process, one \(size) B append to each at once, the second to finish: p99.9",
                 percentile(triple, 99.9) / 1000)
            emit("append_\(label)_3r_qd1_p50_vs_3stores_us", percentile(three.qd1.latencies, 50) / 1000, "us", .lower,
                 "3 stores on the same disk in one process, one \(size) B append to each at once, the second to finish: p50",
                 percentile(triple, 50) / 1000)
            emit("append_\(label)_3r_qd1_p999_vs_1r_us", percentile(three.qd1.latencies, 99.9) / 1000, "us", .lower,
                 "the same QD1 appends on 1 replica (one node), p99.9", percentile(single.qd1.latencies, 99.9) / 1000)
            emit("append_\(label)_3r_qd1_p99_vs_redis_us", percentile(three.qd1.latencies, 99) / 1000, "us", .lower,
                 "Redis XADD of \(size) B, appendfsync always, 1 client: p99", redisQD1.p99 * 1000)
            let how = "Redis XADD of \(size) B, appendfsync always, 64 clients (redis-benchmark)"
            emit("append_\(label)_3r_1stream_records_per_s", three.one.recordsPerSecond, "records/s", .higher, how,
                 redisBulk.rps)
            emit("append_\(label)_3r_64streams_records_per_s", three.many.recordsPerSecond, "records/s", .higher, how,
                 redisBulk.rps)
            emit("append_\(label)_1r_1stream_records_per_s", single.one.recordsPerSecond, "records/s", .higher, how,
                 redisBulk.rps)
            emit("append_\(label)_1r_64streams_records_per_s", single.many.recordsPerSecond, "records/s", .higher, how,
                 redisBulk.rps)
            emit("append_\(label)_3r_1stream_vs_1r_records_per_s", three.one.recordsPerSecond, "records/s", .higher,
                 "the same load on 1 replica (one node)", single.one.recordsPerSecond)
            emit("append_\(label)_3r_1stream_p999_us", percentile(three.one.latencies, 99.9) / 1000, "us", .lower,
                 "the same load on 1 replica (one node), p99.9", percentile(single.one.latencies, 99.9) / 1000)
        }
    }

    /// `rounds` rounds of one append to each of three stores (three WALs, three fdatasyncs) at once: the time to the
    /// second completion, sorted.
    static func secondOfThree(_ reactor: Reactor, suite: StoreSuite, root: String, valueBytes: Int, rounds: Int,
                              durability: WALConfiguration.Durability) async throws -> [UInt64]
    {
        let configurations = (0..<3).map { suite.configuration("\(root)/\($0)", durability: durability) }
        return try await reactor.run(on: 0) { context -> [UInt64] in
            var stores: [ShardBound<ShardStore>] = []
            for configuration in configurations {
                let store = try await ShardStore.open(configuration, on: context)
                try await store.createRange(RangeKey(streamID: 1, index: 0), start: 0)
                stores.append(ShardBound(store))
            }
            let value = [UInt8](repeating: 0x5A, count: valueBytes)
            var samples: [UInt64] = []
            samples.reserveCapacity(rounds)
            for round in 0..<rounds {
                let batch = try RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: UInt64(round), baseTimestamp: 0,
                                            records: [Record(timestamp: 0, value: value)]).encoded()
                let bytes = ShardBound(batch)
                final class Finish { var times: [UInt64] = [] }
                let finish = ShardBound(Finish())
                let t0 = cs_monotonic_ns()
                var tasks: [Task<Void, Error>] = []
                for store in stores {
                    tasks.append(context.spawn {
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.value.count, alignment: 8)
                        defer { buffer.deallocate() }
                        buffer.copyBytes(from: bytes.value)
                        _ = try await store.value.append(RecordBatchView(alreadyValidated: UnsafeRawBufferPointer(buffer)))
                        finish.value.times.append(cs_monotonic_ns() - t0)
                    })
                }
                for task in tasks { try await task.value }
                samples.append(finish.value.times.sorted()[1])
            }
            for store in stores { await store.value.close() }
            return samples.sorted()
        }
    }

    /// QD1 appends on one stream, then `bulkCount` appends with 64 in flight on one stream, then on 64 streams
    /// (one in flight each).
    static func measure(_ addresses: [String], context: ShardContext, nodes: Int, replicas: Int, size: Int,
                        qd1Count: Int, bulkCount: Int) async throws -> (qd1: Load, one: Load, many: Load) {
        let client = ElasticStreamClient(pd: addresses, on: context)
        let box = ShardBound(client)
        let deadline = context.now + .seconds(30)
        while context.now < deadline {
            if let cluster = try? await client.describeCluster(),
               cluster.servers.filter({ $0.state == .serverOnline }).count >= nodes { break }
            try await context.sleep(for: .milliseconds(100))
        }
        let acks = replicas == 1 ? 1 : 2
        let value = [UInt8](repeating: 0x5A, count: size)
        let record = Record(timestamp: 1_700_000_000_000, value: value)

        // QD1 (after a short warm-up).
        let stream = try await client.createStream(replicas: replicas, ackCount: acks).streamID
        let writer = try await client.openStream(stream)
        for _ in 0..<50 { _ = try await writer.append([record]) }
        var qd1 = Load()
        qd1.latencies.reserveCapacity(qd1Count)
        for _ in 0..<qd1Count {
            let t0 = cs_monotonic_ns()
            _ = try await writer.append([record])
            qd1.latencies.append(cs_monotonic_ns() - t0)
        }
        qd1.latencies.sort()

        // One stream, 64 in flight.
        let one = try await pipelined([ShardBound(writer)], inFlightEach: 64, total: bulkCount, record: record,
                                      context: context)
        await writer.close()

        // 64 streams, one in flight each.
        var writers: [ShardBound<StreamWriter>] = []
        for _ in 0..<64 {
            let id = try await box.value.createStream(replicas: replicas, ackCount: acks).streamID
            writers.append(ShardBound(try await box.value.openStream(id)))
        }
        let many = try await pipelined(writers, inFlightEach: 1, total: bulkCount, record: record, context: context)
        for writer in writers { await writer.value.close() }
        await client.close()
        return (qd1, one, many)
    }

    /// `inFlightEach` appenders per writer, `total` appends in all; records/s and every append's latency.
    static func pipelined(_ writers: [ShardBound<StreamWriter>], inFlightEach: Int, total: Int, record: Record,
                          context: ShardContext) async throws -> Load {
        final class Shared {
            var remaining: Int
            var latencies: [UInt64] = []
            init(_ total: Int) { remaining = total }
        }
        let shared = ShardBound(Shared(total))
        shared.value.latencies.reserveCapacity(total)
        let start = cs_monotonic_ns()
        var tasks: [Task<Void, Error>] = []
        for writer in writers {
            for _ in 0..<inFlightEach {
                tasks.append(context.spawn {
                    while shared.value.remaining > 0 {
                        shared.value.remaining -= 1
                        let t0 = cs_monotonic_ns()
                        _ = try await writer.value.append([record])
                        shared.value.latencies.append(cs_monotonic_ns() - t0)
                    }
                })
            }
        }
        for task in tasks { try await task.value }
        let seconds = Double(cs_monotonic_ns() - start) / 1e9
        return Load(latencies: shared.value.latencies.sorted(), recordsPerSecond: Double(total) / seconds)
    }
}

/// `elastic-stream` nodes on loopback for the benchmarks (the cluster and pd suites): each an embedded placement
/// driver member and a range server with one shard; they poll briefly before sleeping (three nodes and the client
/// share the machine).
final class NodeGroup: @unchecked Sendable {
    let directory: String
    let nodes: Int
    let pdPorts: [UInt16]
    private var processes: [Int: Process] = [:]
    private let lock = NSLock()

    init(binary: String, directory: String, nodes: Int, durability: WALConfiguration.Durability,
         segmentBytes: Int = 64 << 20) throws {
        self.directory = directory
        self.nodes = nodes
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Below Linux's ephemeral ports (32768 and up).
        let base = UInt16(22_000 + Int(getpid() % 400) * 12)
        pdPorts = (0..<nodes).map { base + 1 + UInt16($0) }
        // Peer (Raft) ports at base + 9, 10, 11.
        let members = (1...nodes).map { "\"\($0)=127.0.0.1:\(pdPorts[$0 - 1]):\(base + 8 + UInt16($0))\"" }
            .joined(separator: ", ")
        for node in 1...nodes {
            let path = "\(directory)/node-\(node).toml"
            try """
                [reactor]
                cpus = [\((node - 1) % 2)]
                pin_threads = false
                poll_duration = "20us"
                buffer_count = 8
                buffer_size_bytes = 65536
                use_huge_pages = false
                stall_threshold = "off"

                [pd]
                member_id = \(node)
                members = [\(members)]
                data_dir = "\(directory)/node-\(node)/pd"
                tick = "50ms"
                election_ticks = 10
                heartbeat_ticks = 1

                [server]
                port = \(base + 5 + UInt16(node))
                data_dir = "\(directory)/node-\(node)/server"
                segment_bytes = \(ProcessInfo.processInfo.environment["ES_SEGMENT_BYTES"] ?? "\(segmentBytes)")
                cache_bytes = 67108864
                wal_durability = "\(durability.rawValue)"
                wal_max_flush_bytes = \(ProcessInfo.processInfo.environment["ES_WAL_MAX_FLUSH_BYTES"] ?? "1048576")
                """.write(toFile: path, atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["--config", path]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            lock.withLock { processes[node] = process }
            var seen = Data()
            while !String(decoding: seen, as: UTF8.self).contains("READY") {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { throw PerfError("node \(node) did not start") }
                seen += chunk
            }
        }
    }

    var pdAddresses: [String] { pdPorts.map { "127.0.0.1:\($0)" } }

    /// SIGKILL of node `node` (numbered from 1).
    func kill(_ node: Int) {
        guard let process = lock.withLock({ processes.removeValue(forKey: node) }) else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stopAll() {
        let all = lock.withLock { () -> [Process] in
            let all = Array(processes.values)
            processes = [:]
            return all
        }
        for process in all {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Redis streams with every write fsynced (`appendonly yes`, `appendfsync always`), driven by redis-benchmark.
enum Redis {
    static func available() -> Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/redis-server")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/redis-benchmark")
    }

    struct Run {
        var rps: Double
        /// Milliseconds.
        var p50: Double
        var p99: Double
    }

    /// Starts a fresh redis-server in `directory`, runs `requests` XADDs of `valueBytes` from `clients` connections
    /// (one request in flight each), and stops it.
    static func xadd(directory: String, valueBytes: Int, clients: Int, requests: Int) throws -> Run {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let port = 31_000 + Int(getpid() % 500) * 3 + (clients == 1 ? 0 : 1)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        server.arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory, "--appendonly", "yes",
                            "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", ""]
        server.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        server.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try server.run()
        defer {
            // SIGKILL: a child started from a task of Swift's thread pool inherits a mask that blocks SIGTERM.
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        // Wait for it to answer.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let ping = Process()
            ping.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
            ping.arguments = ["-p", "\(port)", "ping"]
            let out = Pipe()
            ping.standardOutput = out
            ping.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try ping.run()
            ping.waitUntilExit()
            if String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains("PONG") { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let value = String(repeating: "Z", count: valueBytes)
        let bench = Process()
        bench.executableURL = URL(fileURLWithPath: "/usr/bin/redis-benchmark")
        bench.arguments = ["-p", "\(port)", "-c", "\(clients)", "-n", "\(requests)", "-P", "1", "--csv",
                           "XADD", "es-perf", "*", "v", value]
        let out = Pipe()
        bench.standardOutput = out
        bench.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try bench.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        bench.waitUntilExit()
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max..."
        let text = String(decoding: data, as: UTF8.self)
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("\"XADD") }) else {
            throw PerfError("redis-benchmark printed no result: \(text.prefix(300))")
        }
        let fields = line.split(separator: ",").map { Double($0.replacingOccurrences(of: "\"", with: "")) }
        guard fields.count >= 7, let rps = fields[1], let p50 = fields[4], let p99 = fields[6] else {
            throw PerfError("cannot parse redis-benchmark's line: \(line)")
        }
        return Run(rps: rps, p50: p50, p99: p99)
    }
}
