import CSupport
import Foundation
import PlacementDriver
import Platform
import Reactor
import Wire

/// `es-perf pd`: placement driver writes (CREATE_RANGE) on a three-member group of `elastic-stream` processes on
/// loopback, beside etcd (three members on loopback, puts of the same size through its v3 HTTP/JSON gateway over
/// kept-alive connections, one request in flight per connection, as many connections as our client has requests in
/// flight) in the same run; and the leader failover time of both.
struct PDSuite: FigureSuite {
    let options: PerfOptions

    let suiteName = "pd"

    func run() async throws {
        let server = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("elastic-stream").path
        guard FileManager.default.isExecutableFile(atPath: server) else {
            throw PerfError("\(server) is missing: swift build -c release --product elastic-stream")
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd") else {
            throw PerfError("etcd is not installed (apt-get install etcd-server)")
        }
        let root = "\(options.directory)/es-perf-pd-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let reactor = try Reactor(configuration: ReactorConfiguration(
            cpus: [0], pinThreads: false, pollDuration: .microseconds(20), stallThreshold: nil, bufferCount: 8))
        defer { reactor.shutdown() }

        let sequential = options.quick ? 300 : 2000
        let concurrent = options.quick ? 2000 : 10000
        let concurrency = 64

        // Ours.
        let group = try NodeGroup(binary: server, directory: "\(root)/pd", nodes: 3, durability: .dsyncWrite,
                                  segmentBytes: 4 << 20)
        defer { group.stopAll() }
        let ours = try await reactor.run(on: 0) { context -> (PDRun, Int) in
            let client = PDClient(addresses: group.pdAddresses, on: context, timeout: .seconds(20))
            let box = PerfClient(client: client)
            let run = try await box.measure(sequential: sequential, concurrent: concurrent, concurrency: concurrency)
            let size = box.commandBytes
            await client.close()
            return (run, size)
        }
        let ourFailover = try await reactor.run(on: 0) { context -> Double in
            let client = PDClient(addresses: group.pdAddresses, on: context, timeout: .seconds(20))
            let box = PerfClient(client: client)
            let leader = Int(try await client.call(.describeCluster, Elasticstream_V1_DescribeClusterRequest(),
                                                   as: Elasticstream_V1_DescribeClusterResponse.self).leaderID)
            let seconds = try await box.failover { group.kill(leader) }
            await client.close()
            return seconds
        }
        group.stopAll()

        // etcd, same machine, same run.
        let etcd = try EtcdGroup(directory: "\(root)/etcd")
        defer { etcd.stopAll() }
        let valueBytes = ours.1
        let theirs = try await reactor.run(on: 0) { context -> PDRun in
            try await EtcdClient.measure(etcd.clientAddresses, context: context, valueBytes: valueBytes,
                                         sequential: sequential, concurrent: concurrent, concurrency: concurrency)
        }
        let etcdFailover = try await reactor.run(on: 0) { context -> Double in
            try await EtcdClient.failover(etcd, context: context, valueBytes: valueBytes)
        }

        let how = "etcd 3.4, 3 members on loopback, put of \(valueBytes) B via the v3 HTTP/JSON gateway, kept-alive connections"
        emit("create_range_qd1_p50_us", percentile(ours.0.latencies, 50) / 1000, "us", .lower, "\(how), QD1: p50",
             percentile(theirs.latencies, 50) / 1000)
        emit("create_range_qd1_p99_us", percentile(ours.0.latencies, 99) / 1000, "us", .lower, "\(how), QD1: p99",
             percentile(theirs.latencies, 99) / 1000)
        emit("create_range_qd1_p999_us", percentile(ours.0.latencies, 99.9) / 1000, "us", .lower, "\(how), QD1: p99.9",
             percentile(theirs.latencies, 99.9) / 1000)
        emit("create_range_ops_per_s", ours.0.throughput, "ops/s", .higher,
             "\(how), \(concurrency) requests in flight (one per connection)", theirs.throughput)
        emit("create_range_concurrent_p99_us", percentile(ours.0.concurrentLatencies, 99) / 1000, "us", .lower,
             "\(how), \(concurrency) in flight: p99", percentile(theirs.concurrentLatencies, 99) / 1000)
        emit("leader_failover_ms", ourFailover * 1000, "ms", .lower,
             "etcd with the same election timing (50 ms heartbeat, 500 ms election timeout): SIGKILL of the leader to the first acknowledged put (attempts of 200 ms at most)",
             etcdFailover * 1000)
    }
}

struct PDRun: Sendable {
    var latencies: [UInt64]
    var concurrentLatencies: [UInt64]
    var throughput: Double
}

struct PerfClient: @unchecked Sendable {
    let client: PDClient

    /// The size of one CREATE_RANGE command in the Raft log (what etcd's puts are sized to).
    var commandBytes: Int {
        (try? PDCommand(.pdCreateRange, now: 0, request: createRange(stream: 1000)).encoded().count) ?? 32
    }

    func createRange(stream: UInt64) -> Elasticstream_V1_CreateRangeRequest {
        var request = Elasticstream_V1_CreateRangeRequest()
        request.range.streamID = stream
        request.range.index = 0
        request.range.startOffset = 0
        request.epoch = 1
        return request
    }

    /// Three range servers, registered, or heartbeating so that they stay healthy (the setup takes longer than the
    /// placement driver's 10 s heartbeat timeout).
    func keepServersHealthy() async throws {
        for id in UInt64(1)...3 {
            if try await heartbeat(id) { continue }
            var register = Elasticstream_V1_RegisterRangeServerRequest()
            register.server.serverID = id
            register.server.shardAddresses = ["127.0.0.1:1"]
            _ = try await client.call(.registerRangeServer, register, as: Elasticstream_V1_RegisterRangeServerResponse.self)
        }
    }

    /// False when the server is not registered yet.
    private func heartbeat(_ id: UInt64) async throws -> Bool {
        var request = Elasticstream_V1_RangeServerHeartbeatRequest()
        request.serverID = id
        var failure: PDError?
        do {
            _ = try await client.call(.rangeServerHeartbeat, request, as: Elasticstream_V1_RangeServerHeartbeatResponse.self)
        } catch {
            failure = error
        }
        guard let failure else { return true }
        if failure.code == .serverNotFound { return false }
        throw failure
    }

    /// Streams opened once (epoch 1), each getting its range 0 in the timed part.
    func prepareStreams(_ count: Int, concurrency: Int) async throws -> [UInt64] {
        try await keepServersHealthy()
        let box = self
        return try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var ids: [UInt64] = []
                    for _ in stride(from: worker, to: count, by: concurrency) {
                        var create = Elasticstream_V1_CreateStreamRequest()
                        create.stream.replicaCount = 3
                        create.stream.ackCount = 2
                        let id = try await box.client.call(.createStream, create,
                                                           as: Elasticstream_V1_CreateStreamResponse.self).stream.streamID
                        var open = Elasticstream_V1_OpenStreamRequest()
                        open.streamID = id
                        _ = try await box.client.call(.openStream, open, as: Elasticstream_V1_OpenStreamResponse.self)
                        ids.append(id)
                    }
                    return ids
                }
            }
            return try await group.reduce(into: [UInt64]()) { $0 += $1 }
        }
    }

    func measure(sequential: Int, concurrent: Int, concurrency: Int) async throws -> PDRun {
        let streams = try await prepareStreams(sequential + concurrent, concurrency: concurrency)
        try await keepServersHealthy()
        var latencies: [UInt64] = []
        for id in streams.prefix(sequential) {
            let start = cs_monotonic_ns()
            _ = try await client.call(.pdCreateRange, createRange(stream: id), as: Elasticstream_V1_CreateRangeResponse.self)
            latencies.append(cs_monotonic_ns() - start)
        }
        let rest = Array(streams.dropFirst(sequential))
        try await keepServersHealthy()
        let box = self
        let begin = cs_monotonic_ns()
        let concurrentLatencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var samples: [UInt64] = []
                    for i in stride(from: worker, to: rest.count, by: concurrency) {
                        let start = cs_monotonic_ns()
                        _ = try await box.client.call(.pdCreateRange, box.createRange(stream: rest[i]),
                                                      as: Elasticstream_V1_CreateRangeResponse.self)
                        samples.append(cs_monotonic_ns() - start)
                    }
                    return samples
                }
            }
            return try await group.reduce(into: [UInt64]()) { $0 += $1 }
        }
        let seconds = Double(cs_monotonic_ns() - begin) / 1e9
        return PDRun(latencies: latencies.sorted(), concurrentLatencies: concurrentLatencies.sorted(),
                     throughput: Double(rest.count) / seconds)
    }

    /// Writes steadily, runs `kill`, and returns the seconds from it to the next acknowledged write.
    func failover(_ kill: () -> Void) async throws -> Double {
        var create = Elasticstream_V1_CreateStreamRequest()
        create.stream.replicaCount = 1
        create.stream.ackCount = 1
        for _ in 0..<10 { _ = try await client.call(.createStream, create, as: Elasticstream_V1_CreateStreamResponse.self) }
        kill()
        let start = cs_monotonic_ns()
        _ = try await client.call(.createStream, create, as: Elasticstream_V1_CreateStreamResponse.self)
        return Double(cs_monotonic_ns() - start) / 1e9
    }
}

/// Three etcd members on loopback with the election timing of our configuration.
final class EtcdGroup: @unchecked Sendable {
    let directory: String
    let clientPorts: [UInt16]
    let peerPorts: [UInt16]
    private var processes: [Int: Process] = [:]
    private let lock = NSLock()

    init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let base = UInt16(28_000 + Int(getpid() % 500) * 7)
        clientPorts = [base + 1, base + 2, base + 3]
        peerPorts = [base + 4, base + 5, base + 6]
        let cluster = (1...3).map { "e\($0)=http://127.0.0.1:\(peerPorts[$0 - 1])" }.joined(separator: ",")
        for member in 1...3 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/etcd")
            process.arguments = [
                "--name", "e\(member)", "--data-dir", "\(directory)/e\(member)",
                "--listen-client-urls", "http://127.0.0.1:\(clientPorts[member - 1])",
                "--advertise-client-urls", "http://127.0.0.1:\(clientPorts[member - 1])",
                "--listen-peer-urls", "http://127.0.0.1:\(peerPorts[member - 1])",
                "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPorts[member - 1])",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--heartbeat-interval", "50", "--election-timeout", "500",
            ]
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            process.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            processes[member] = process
        }
    }

    var clientAddresses: [(host: String, port: UInt16)] { clientPorts.map { ("127.0.0.1", $0) } }

    func kill(port: UInt16) {
        guard let member = clientPorts.firstIndex(of: port).map({ $0 + 1 }),
              let process = lock.withLock({ processes.removeValue(forKey: member) })
        else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stopAll() {
        for port in clientPorts { kill(port: port) }
    }
}

/// A minimal HTTP/1.1 client on a reactor connection, kept alive: one request at a time.
final class HTTPConnection {
    let connection: TCPConnection
    private var buffer: [UInt8] = []
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 8)

    init(_ connection: TCPConnection) {
        self.connection = connection
    }

    deinit {
        receiveBuffer.deallocate()
    }

    static func connect(host: String, port: UInt16, context: ShardContext) async throws -> HTTPConnection {
        HTTPConnection(try await context.connect(host: host, port: port))
    }

    struct Response {
        var status: Int
        var body: [UInt8]
    }

    /// POSTs a JSON body; returns the status code and the body.
    func post(_ path: String, _ body: [UInt8]) async throws -> Response {
        let head = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        try await sendAll(Array(head.utf8) + body)
        var end = headerEnd()
        while end == nil {
            try await fill()
            end = headerEnd()
        }
        let (status, length) = Self.parseHead(buffer, end: end!)
        let total = end! + 4 + length
        while buffer.count < total { try await fill() }
        let response = Response(status: status, body: Array(buffer[(end! + 4)..<total]))
        buffer.removeFirst(total)
        return response
    }

    private func sendAll(_ bytes: [UInt8]) async throws {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
        raw.copyBytes(from: bytes)
        do {
            try await connection.send(UnsafeRawBufferPointer(raw))
        } catch {
            raw.deallocate()
            throw error
        }
        raw.deallocate()
    }

    static func parseHead(_ bytes: [UInt8], end: Int) -> (Int, Int) {
        let header = String(decoding: bytes[..<end], as: UTF8.self)
        var status = 0
        var length = 0
        for (number, line) in header.split(separator: "\r\n").enumerated() {
            if number == 0 {
                let parts = line.split(separator: " ")
                if parts.count > 1 { status = Int(parts[1]) ?? 0 }
                continue
            }
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 && parts[0].lowercased() == "content-length" {
                length = Int(parts[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        return (status, length)
    }

    private func headerEnd() -> Int? {
        guard buffer.count >= 4 else { return nil }
        for i in 0...(buffer.count - 4) where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
            return i
        }
        return nil
    }

    private func fill() async throws {
        let n = try await connection.receive(into: receiveBuffer)
        if n == 0 { throw PerfError("etcd closed the connection") }
        buffer += UnsafeRawBufferPointer(rebasing: receiveBuffer[..<n])
    }

    func close() async {
        try? await connection.close()
    }
}

enum EtcdClient {
    static func putBody(_ key: Int, _ value: [UInt8]) -> [UInt8] {
        let json = "{\"key\":\"\(Data("range/\(key)".utf8).base64EncodedString())\",\"value\":\"\(Data(value).base64EncodedString())\"}"
        return Array(json.utf8)
    }

    /// The member that leads, found through each member's status.
    static func leader(_ addresses: [(host: String, port: UInt16)], context: ShardContext) async throws -> (host: String, port: UInt16) {
        for _ in 0..<200 {
            for address in addresses {
                guard let http = try? await HTTPConnection.connect(host: address.host, port: address.port, context: context),
                      let response = try? await http.post("/v3/maintenance/status", Array("{}".utf8))
                else { continue }
                await http.close()
                guard response.status == 200,
                      let json = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
                      let header = json["header"] as? [String: Any], let member = header["member_id"] as? String,
                      let leader = json["leader"] as? String
                else { continue }
                if member == leader { return address }
            }
            try await context.sleep(for: .milliseconds(50))
        }
        throw PerfError("etcd elected no leader")
    }

    static func put(_ http: HTTPConnection, _ key: Int, _ value: [UInt8]) async throws {
        let response = try await http.post("/v3/kv/put", putBody(key, value))
        guard response.status == 200 else {
            throw PerfError("etcd put answered \(response.status): \(String(decoding: response.body, as: UTF8.self))")
        }
    }

    static func measure(_ addresses: [(host: String, port: UInt16)], context: ShardContext, valueBytes: Int,
                        sequential: Int, concurrent: Int, concurrency: Int) async throws -> PDRun {
        let leader = try await leader(addresses, context: context)
        let value = [UInt8](repeating: 0x61, count: valueBytes)
        let single = try await HTTPConnection.connect(host: leader.host, port: leader.port, context: context)
        for i in 0..<50 { try await put(single, -i - 1, value) }  // warm-up
        var latencies: [UInt64] = []
        for i in 0..<sequential {
            let start = cs_monotonic_ns()
            try await put(single, i, value)
            latencies.append(cs_monotonic_ns() - start)
        }
        await single.close()
        var connections: [HTTPConnection] = []
        for _ in 0..<concurrency {
            connections.append(try await HTTPConnection.connect(host: leader.host, port: leader.port, context: context))
        }
        let shared = ShardBound(connections)
        let begin = cs_monotonic_ns()
        let concurrentLatencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var samples: [UInt64] = []
                    for i in stride(from: worker, to: concurrent, by: concurrency) {
                        let start = cs_monotonic_ns()
                        try await put(shared.value[worker], sequential + i, value)
                        samples.append(cs_monotonic_ns() - start)
                    }
                    return samples
                }
            }
            return try await group.reduce(into: [UInt64]()) { $0 += $1 }
        }
        let seconds = Double(cs_monotonic_ns() - begin) / 1e9
        for connection in connections { await connection.close() }
        return PDRun(latencies: latencies.sorted(), concurrentLatencies: concurrentLatencies.sorted(),
                     throughput: Double(concurrent) / seconds)
    }

    /// Puts steadily to the leader, SIGKILLs it, and returns the seconds until a put through another member is
    /// acknowledged.
    static func failover(_ group: EtcdGroup, context: ShardContext, valueBytes: Int) async throws -> Double {
        let addresses = group.clientAddresses
        let leader = try await leader(addresses, context: context)
        let value = [UInt8](repeating: 0x62, count: valueBytes)
        let http = try await HTTPConnection.connect(host: leader.host, port: leader.port, context: context)
        for i in 0..<10 { try await put(http, 1_000_000 + i, value) }
        await http.close()
        group.kill(port: leader.port)
        let start = cs_monotonic_ns()
        let others = addresses.filter { $0.port != leader.port }
        var attempt = 0
        while cs_monotonic_ns() - start < 30_000_000_000 {
            let address = others[attempt % others.count]
            attempt += 1
            if let connection = try? await HTTPConnection.connect(host: address.host, port: address.port, context: context) {
                // etcd holds a put while it has no leader; give each attempt 200 ms, as our client's backoff would.
                let bound = ShardBound(connection)
                let key = 2_000_000 + attempt
                let done = (try? await context.withTimeout(.milliseconds(200)) {
                    try await put(bound.value, key, value)
                    return true
                }) ?? false
                await connection.close()
                if done { return Double(cs_monotonic_ns() - start) / 1e9 }
            }
            try await context.sleep(for: .milliseconds(5))
        }
        throw PerfError("etcd did not recover within 30 s")
    }
}
