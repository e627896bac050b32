import Client
import Foundation
import PlacementDriver
import Reactor
import Records
import TestSupport
import Testing
import Wire

/// `elastic-stream` nodes on loopback (three by default), each an embedded placement driver member and a range
/// server with its own data directory. Three nodes share this machine's two cores, so they poll briefly and sleep.
/// With `shards: 2`, each node runs two shards (one per core), each listening on its own port.
final class NodeCluster: @unchecked Sendable {
    let directory: String
    let nodes: Int
    let shards: Int
    let pdPorts: [UInt16]
    /// The placement driver members' peer (Raft) ports.
    let pdPeerPorts: [UInt16]
    /// The first shard's port of each node; shard i listens on it plus i.
    let serverPorts: [UInt16]
    private var processes: [Int: Process] = [:]
    private let lock = NSLock()

    /// `[server] writer_lease` of every node.
    let writerLease: String

    /// Lines added to every node's [server] and [pd] tables.
    let serverExtra: String
    let pdExtra: String

    init(nodes: Int = 3, shards: Int = 1, writerLease: String = "10s", serverExtra: String = "",
         pdExtra: String = "") throws {
        self.serverExtra = serverExtra
        self.pdExtra = pdExtra
        self.nodes = nodes
        self.shards = shards
        self.writerLease = writerLease
        directory = try makeTemporaryDirectory("es-nodes")
        // Below Linux's ephemeral ports (32768 and up), so that no outgoing connection can hold a node's port.
        let base = 12_000 + Int(getpid() % 500) * 20
        pdPorts = (0..<nodes).map { UInt16(base + 1 + $0) }
        pdPeerPorts = (0..<nodes).map { UInt16(base + 15 + $0) }
        serverPorts = (0..<nodes).map { UInt16(base + 4 + $0 * shards) }
    }

    var pdAddresses: [String] { pdPorts.map { "127.0.0.1:\($0)" } }
    func serverAddress(_ node: Int, shard: Int = 0) -> String { "127.0.0.1:\(Int(serverPorts[node - 1]) + shard)" }

    /// The node whose range server has `server`'s first shard address.
    func node(of server: Elasticstream_V1_RangeServer) -> Int? {
        guard let port = server.shardAddresses.first?.split(separator: ":").last.flatMap({ UInt16($0) }) else { return nil }
        return serverPorts.firstIndex(of: port).map { $0 + 1 }
    }

    func configuration(_ node: Int) -> String {
        let members = (1...nodes).map { "\"\($0)=127.0.0.1:\(pdPorts[$0 - 1]):\(pdPeerPorts[$0 - 1])\"" }
            .joined(separator: ", ")
        let cpus = shards == 1 ? "\((node - 1) % 2)" : (0..<shards).map { "\($0 % 2)" }.joined(separator: ", ")
        return """
            [reactor]
            cpus = [\(cpus)]
            pin_threads = false
            poll_duration = "20us"
            buffer_count = 8
            buffer_size_bytes = 65536
            use_huge_pages = false
            drain_timeout = "500ms"
            stall_threshold = "off"

            [pd]
            member_id = \(node)
            members = [\(members)]
            data_dir = "\(directory)/node-\(node)/pd"
            tick = "20ms"
            election_ticks = 10
            heartbeat_ticks = 1
            server_heartbeat_timeout = "3s"
            \(pdExtra)

            [server]
            port = \(serverPorts[node - 1])
            data_dir = "\(directory)/node-\(node)/server"
            heartbeat_interval = "200ms"
            reconcile_interval = "1s"
            writer_lease = "\(writerLease)"
            segment_bytes = 8388608
            cache_bytes = 16777216
            drain_timeout = "1s"
            \(serverExtra)
            """
    }

    /// Starts node `node` and waits for its READY line.
    func start(_ node: Int) throws {
        let path = "\(directory)/node-\(node).toml"
        try configuration(node).write(toFile: path, atomically: true, encoding: .utf8)
        // The node's log (appended across restarts), for a failing test to show.
        let log = "\(directory)/node-\(node).log"
        if !FileManager.default.fileExists(atPath: log) { FileManager.default.createFile(atPath: log, contents: nil) }
        let logHandle = FileHandle(forWritingAtPath: log)
        logHandle?.seekToEndOfFile()
        let process = try launchServer(config: path, stderr: logHandle)
        lock.withLock { processes[node] = process }
    }

    func startAll() throws {
        for node in 1...nodes { try start(node) }
    }

    func kill(_ node: Int) {
        guard let process = lock.withLock({ processes.removeValue(forKey: node) }) else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// The process id of node `node`, while it runs.
    func pid(_ node: Int) -> Int32? {
        guard let process = lock.withLock({ processes[node] }), process.isRunning else { return nil }
        return process.processIdentifier
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to node `node`'s process.
    func signal(_ node: Int, _ signal: Int32) {
        guard let process = lock.withLock({ processes[node] }) else { return }
        Foundation.kill(process.processIdentifier, signal)
    }

    /// Waits (at most 2 s) until every thread of node `node` is stopped (after SIGSTOP, which takes effect
    /// asynchronously).
    func waitUntilStopped(_ node: Int) {
        guard let process = lock.withLock({ processes[node] }) else { return }
        let tasks = "/proc/\(process.processIdentifier)/task"
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            let threads = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
            let stopped = threads.allSatisfy { thread in
                guard let stat = try? String(contentsOfFile: "\(tasks)/\(thread)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return true }
                let state = stat[stat.index(close, offsetBy: 2)]
                return state == "T" || state == "t"
            }
            if stopped && !threads.isEmpty { return }
            usleep(1000)
        }
    }

    /// SIGTERM, and the exit status.
    func terminate(_ node: Int) -> Int32? {
        guard let process = lock.withLock({ processes.removeValue(forKey: node) }) else { return nil }
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    func log(_ node: Int) -> String {
        (try? String(contentsOfFile: "\(directory)/node-\(node).log", encoding: .utf8)) ?? ""
    }

    func stopAll() {
        for node in 1...nodes { kill(node) }
    }

    deinit {
        stopAll()
        if ProcessInfo.processInfo.environment["ES_KEEP_TEST_DIR"] == nil {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}

/// Carries a shard-bound client into a task on its shard.
struct Box<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Runs `body` with a client of `cluster` on shard 0 of `reactor`.
func withClient<T: Sendable>(_ reactor: Reactor, _ cluster: NodeCluster,
                             configuration: ClientConfiguration = ClientConfiguration(),
                             _ body: @escaping @Sendable (Box<ElasticStreamClient>) async throws -> T) async throws -> T {
    let addresses = cluster.pdAddresses
    return try await reactor.run(on: 0) { context in
        let client = ElasticStreamClient(pd: addresses, on: context, configuration: configuration)
        do {
            let result = try await body(Box(client))
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }
}

/// Waits until `count` range servers are online.
func waitForServers(_ client: ElasticStreamClient, _ count: Int, within: Duration = .seconds(20)) async throws {
    let deadline = ContinuousClock.now + within
    while ContinuousClock.now < deadline {
        if let cluster = try? await client.describeCluster(),
           cluster.servers.filter({ $0.state == .serverOnline }).count >= count { return }
        try await client.context.sleep(for: .milliseconds(100))
    }
    throw ClientError.unavailable("fewer than \(count) range servers came online")
}

/// A record whose value says which one it is.
func record(_ n: Int, size: Int = 16) -> Record {
    var value = Array("record-\(n)-".utf8)
    if value.count < size { value += [UInt8](repeating: UInt8(ascii: "x"), count: size - value.count) }
    return Record(timestamp: 1_700_000_000_000 + Int64(n), headers: [Header("n", "\(n)")], value: value)
}

/// The number a record made by `record(_:)` carries.
func number(_ record: Record) -> Int? {
    guard let header = record.headers.first(where: { $0.key == Array("n".utf8) }) else { return nil }
    return Int(String(decoding: header.value, as: UTF8.self))
}

/// Every record of a stream from 0 to `end`, read in order.
func readAll(_ client: ElasticStreamClient, _ stream: UInt64, to end: UInt64) async throws -> [ReadRecord] {
    var records: [ReadRecord] = []
    var next: UInt64 = 0
    while next < end {
        let batch = try await client.read(stream: stream, from: next, maxBytes: 256 << 10)
        if batch.isEmpty { break }
        records += batch
        next = batch.last!.offset + 1
    }
    return records
}
