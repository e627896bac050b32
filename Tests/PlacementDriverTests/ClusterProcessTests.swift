import Foundation
import PlacementDriver
import Platform
import Reactor
import TestSupport
import Testing
import Wire

/// Three `elastic-stream` processes on loopback, each with its own configuration and data directory.
final class ProcessCluster: @unchecked Sendable {
    let directory: String
    let ports: [UInt16]
    private var processes: [Int: Process] = [:]
    private let lock = NSLock()

    init(directory: String) {
        self.directory = directory
        let base = UInt16(24_000 + Int(getpid() % 1_000) * 5)
        ports = [base + 1, base + 2, base + 3]
    }

    var addresses: [String] { ports.map { "127.0.0.1:\($0)" } }

    func configuration(_ member: Int) -> String {
        // Peer (Raft) ports 10000 below the client ports, below Linux's ephemeral ports.
        let members = (1...3).map { "\"\($0)=127.0.0.1:\(ports[$0 - 1]):\(ports[$0 - 1] - 10_000)\"" }
            .joined(separator: ", ")
        return """
            [reactor]
            cpus = [\((member - 1) % 2)]
            pin_threads = false
            poll_duration = "20us"
            buffer_count = 8
            buffer_size_bytes = 65536
            use_huge_pages = false
            drain_timeout = "500ms"
            stall_threshold = "off"

            [pd]
            member_id = \(member)
            members = [\(members)]
            data_dir = "\(directory)/member-\(member)"
            tick = "20ms"
            election_ticks = 10
            heartbeat_ticks = 1

            [server]
            port = \(ports[member - 1] + 3)
            data_dir = "\(directory)/server-\(member)"
            segment_bytes = 4194304
            """
    }

    /// Starts member `member` and waits for its READY line.
    func start(_ member: Int) throws {
        let path = "\(directory)/member-\(member).toml"
        try configuration(member).write(toFile: path, atomically: true, encoding: .utf8)
        let process = try launchServer(config: path, within: 20)
        lock.withLock { processes[member] = process }
    }

    func kill(_ member: Int) {
        guard let process = lock.withLock({ processes.removeValue(forKey: member) }) else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM, and the exit status.
    func terminate(_ member: Int) -> Int32? {
        guard let process = lock.withLock({ processes.removeValue(forKey: member) }) else { return nil }
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    func stopAll() {
        for member in 1...3 { kill(member) }
    }
}

/// Runs `body` with a PD client on shard 0 of `reactor`.
func withClient<T: Sendable>(_ reactor: Reactor, _ addresses: [String], timeout: Duration = .seconds(5),
                             _ body: @escaping @Sendable (ClientBox) async throws -> T) async throws -> T {
    try await reactor.run(on: 0) { context in
        let client = PDClient(addresses: addresses, on: context, timeout: timeout)
        let box = ClientBox(client: client)
        do {
            let result = try await body(box)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }
}

struct ClientBox: @unchecked Sendable {
    let client: PDClient

    func createStream() async throws(PDError) -> UInt64 {
        var request = Elasticstream_V1_CreateStreamRequest()
        request.stream.replicaCount = 3
        request.stream.ackCount = 2
        return try await client.call(.createStream, request, as: Elasticstream_V1_CreateStreamResponse.self).stream.streamID
    }

    func describe(_ id: UInt64) async throws(PDError) -> Elasticstream_V1_Stream {
        var request = Elasticstream_V1_DescribeStreamRequest()
        request.streamID = id
        return try await client.call(.describeStream, request, as: Elasticstream_V1_DescribeStreamResponse.self).stream
    }

    func leader() async throws(PDError) -> UInt64 {
        try await client.call(.describeCluster, Elasticstream_V1_DescribeClusterRequest(),
                              as: Elasticstream_V1_DescribeClusterResponse.self).leaderID
    }
}

@Suite(.serialized) struct ClusterProcessTests {
    /// Three processes: a stream created through one member is visible through each of the others; SIGKILL the
    /// leader under a steady stream of writes: a new leader serves within 2 s, every acknowledged write is still
    /// there and none was applied twice; the killed member restarts and the group keeps serving with it while another member is down; with two
    /// of three down, calls fail with a clear error instead of hanging; SIGTERM stops a member cleanly.
    @Test func threeMembersSurviveTheLossOfTheLeader() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: serverPath()),
                     "build the server first (swift build builds it): \(serverPath())")
        let directory = try makeTemporaryDirectory("es-cluster")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = ProcessCluster(directory: directory)
        defer { cluster.stopAll() }
        for member in 1...3 { try cluster.start(member) }
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        let addresses = cluster.addresses

        // Created through member 1, described through each member alone.
        let created = try await withClient(reactor, [addresses[0]]) { try await $0.createStream() }
        for address in addresses {
            let stream = try await withClient(reactor, [address]) { try await $0.describe(created) }
            #expect(stream.streamID == created && stream.replicaCount == 3)
        }

        // Steady writes; kill the leader in the middle.
        let leader = Int(try await withClient(reactor, addresses) { try await $0.leader() })
        try #require((1...3).contains(leader))
        let (acknowledged, failoverSeconds) = try await withClient(reactor, addresses, timeout: .seconds(10)) { box in
            var acknowledged: [UInt64] = []
            for _ in 0..<30 { acknowledged.append(try await box.createStream()) }
            cluster.kill(leader)
            let killed = ContinuousClock.now
            acknowledged.append(try await box.createStream())
            let failover = ContinuousClock.now - killed
            for _ in 0..<30 { acknowledged.append(try await box.createStream()) }
            return (acknowledged, Double(failover.components.seconds) + Double(failover.components.attoseconds) / 1e18)
        }
        print("cluster failover: first write acknowledged \(String(format: "%.3f", failoverSeconds)) s after SIGKILL of the leader")
        #expect(failoverSeconds < 2, "the first write after the leader's SIGKILL took \(failoverSeconds) s")
        #expect(Set(acknowledged).count == acknowledged.count, "a stream id was acknowledged twice")
        let survivors = addresses.enumerated().filter { $0.offset + 1 != leader }.map(\.element)
        let missing = try await withClient(reactor, survivors) { box in
            var missing: [UInt64] = []
            for id in acknowledged + [created] {
                do { _ = try await box.describe(id) } catch { missing.append(id) }
            }
            return missing
        }
        #expect(missing.isEmpty, "acknowledged streams lost: \(missing)")
        // Stream ids are allocated in order: any id up to the highest that was not acknowledged would be a write
        // applied twice (a retry across the failover applied again).
        let known = Set(acknowledged + [created])
        let extra = try await withClient(reactor, survivors) { box in
            var extra: [UInt64] = []
            for id in 1...(known.max()! + 3) where !known.contains(id) {
                if (try? await box.describe(id)) != nil { extra.append(id) }
            }
            return extra
        }
        #expect(extra.isEmpty, "streams nobody was told about (applied twice?): \(extra)")

        // The killed member comes back; then another goes down: the group (now needing the restarted member) serves.
        try cluster.start(leader)
        try await Task.sleep(for: .milliseconds(500))
        let downed = (1...3).first { $0 != leader }!
        cluster.kill(downed)
        let live = addresses.enumerated().filter { $0.offset + 1 != downed }.map(\.element)
        let afterRestart = try await withClient(reactor, live, timeout: .seconds(10)) { box in
            let id = try await box.createStream()
            var missing = 0
            for old in acknowledged where (try? await box.describe(old)) == nil { missing += 1 }
            return (id, missing)
        }
        #expect(afterRestart.1 == 0, "\(afterRestart.1) acknowledged streams missing after the restart")

        // Two of three down: a clear error within the client's timeout, not a hang.
        let remaining = (1...3).first { $0 != downed }!
        cluster.kill(remaining)
        let started = ContinuousClock.now
        let failure = try await withClient(reactor, addresses, timeout: .seconds(2)) { box -> PDError? in
            do {
                _ = try await box.createStream()
                return nil
            } catch let error as PDError {
                return error
            } catch {
                return PDError(.unknown, "\(error)")
            }
        }
        let waited = ContinuousClock.now - started
        let error = try #require(failure, "a write succeeded with two of three members down")
        #expect(error.code == .timeout, "\(error)")
        #expect(waited < .seconds(5), "the failure took \(waited)")

        // SIGTERM: a clean exit.
        let last = (1...3).first { $0 != downed && $0 != remaining }!
        #expect(cluster.terminate(last) == 0)
    }
}
