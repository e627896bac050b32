import Client
import PlacementDriver
import Raft
import RangeServer
import Reactor
import Simulation
import Store
import Transport

/// What one run simulates: three nodes (each an embedded placement driver member and a two-shard range server, as
/// `elastic-stream` runs them) and two client processes, each with one writer. Seeds with misdirected writes add a
/// fourth node, a range server without a placement driver member, so that the cluster can place three replicas
/// while a node whose disk lost acknowledged data refuses to start.
struct ClusterShape {
    var nodes = 3
    /// Nodes 1...members run a placement driver member.
    var members = 3
    var shardsPerNode = 2
    var writers = 2
}

/// A simulated node: its process, and what its boot made (nil until it has booted, and after a crash).
final class SimulatedNode: @unchecked Sendable {
    let index: Int
    let process: SimulatedProcess
    var member: PDMember?
    var server: PDServer?
    var rangeServer: RangeServer?
    /// Boots that failed (the error), and ones that succeeded.
    var bootFailures: [String] = []
    /// Boots that failed since the last one that succeeded.
    var failedBootsInARow = 0
    /// Three failed boots in a row: the node refuses to start (its disk lost durable data, as the run expects of a
    /// misdirecting disk only).
    var downForGood: Bool { failedBootsInARow >= 3 }
    /// Why the process last ended itself (a failed boot or a fatal storage failure).
    var exitReason: String?
    var booted = 0

    init(index: Int, process: SimulatedProcess) {
        self.index = index
        self.process = process
    }

    var host: String { process.host }
    var pdAddress: String { "\(host):2380" }
}

/// Builds the node configurations and boots nodes as the `elastic-stream` executable does.
struct ClusterBuilder {
    let shape: ClusterShape
    let durability: WALConfiguration.Durability

    func memberAddresses(_ nodes: [SimulatedNode]) -> [MemberAddress] {
        nodes.prefix(shape.members).map { MemberAddress(id: NodeID($0.index), host: $0.host, port: 2380, peerPort: 2390) }
    }

    func boot(_ node: SimulatedNode, all nodes: [SimulatedNode]) {
        let members = memberAddresses(nodes)
        let settings = PDMember.Settings(
            id: NodeID(node.index), initialVoters: Set(members.map(\.id)), directory: "/data/pd",
            tick: .milliseconds(50), raft: RaftConfiguration(electionTicks: 10, heartbeatTicks: 1),
            stateMachine: .init(heartbeatTimeoutMilliseconds: 5_000), snapshotEvery: 2_000)
        var server = RangeServerConfiguration()
        server.host = node.host
        server.port = 10911
        server.dataDirectory = "/data/server"
        server.heartbeatInterval = .seconds(1)
        server.reconcileInterval = .seconds(5)
        server.writerLease = .seconds(10)
        server.segmentBytes = 512 << 10
        server.walMaxFlushBytes = 64 << 10
        server.cacheBytes = 1 << 20
        server.checkpointIntervalBytes = 256 << 10
        server.walDurability = durability
        server.maxFetchWait = .seconds(2)
        let pdAddresses = members.map(\.description)
        let memberTable = Dictionary(uniqueKeysWithValues: members.map { ($0.id, $0) })
        let box = SimulatorBox(node)
        let serverConfiguration = server
        node.process.start(shards: shape.shardsPerNode) { reactor, context in
            let node = box.value
            // As `elastic-stream` exits on a fatal storage failure, the simulated process crashes (and is restarted).
            let process = SimulatorBox(node.process)
            let reasons = SimulatorBox(node)
            reactor.onFatalFailure { reason in
                reasons.value.exitReason = reason
                process.value.crashSoon()
            }
            do {
                if node.index <= members.count {
                    let member = try await PDMember.start(settings, on: context)
                    node.member = member
                    node.server = try PDServer.start(member: member, members: memberTable, on: context,
                                                     limits: ConnectionLimits())
                }
                let rangeServer = try await RangeServer.start(serverConfiguration, placementDriver: pdAddresses,
                                                              reactor: reactor, on: context)
                node.rangeServer = rangeServer
                node.booted += 1
                node.failedBootsInARow = 0
            } catch {
                node.failedBootsInARow += 1
                node.bootFailures.append("\(error)")
                node.exitReason = "boot failed: \(error)"
                node.process.crashSoon()
            }
        }
    }

    /// Kills `node` at once; what it made is gone with it.
    func crash(_ node: SimulatedNode) {
        node.process.crash()
        node.member = nil
        node.server = nil
        node.rangeServer = nil
    }
}

/// A value touched only on the simulator's thread, carried through a closure that must be Sendable.
struct SimulatorBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
