import Client
import PlacementDriverClient
import Reactor
import Records
import Simulation
import Transport
import Wire

/// Scenarios: one exact interleaving, arranged with the simulator's partitions instead of drawn from a seed, for a
/// bug a seed found (a seed stops replaying its history once the engine changes; a scenario does not).
enum Scenario: String {
    /// Seed 990: an open whose placement driver answer comes back late, after a newer writer fenced the old range's
    /// replicas, must fail with `fenced` at once, not retry for the failover timeout.
    case fencedOpen = "fenced-open"

    func run(verbose: Bool) -> [String] {
        switch self {
        case .fencedOpen: return runFencedOpen(verbose: verbose)
        }
    }
}

private func runFencedOpen(verbose: Bool) -> [String] {
    let simulator = Simulator(seed: 1)
    let builder = ClusterBuilder(shape: ClusterShape(), durability: .dsyncWrite)
    let nodes = (1...3).map { i in
        SimulatedNode(index: i, process: simulator.addProcess(name: "node-\(i)", host: "127.0.1.\(i)"))
    }
    for node in nodes { builder.boot(node, all: nodes) }
    let pd = nodes.map(\.pdAddress)
    func log(_ message: String) {
        if verbose { print(String(format: "[%9.3f] ", Double(simulator.now) / 1e9) + message) }
    }

    final class State: @unchecked Sendable {
        var stream: UInt64 = 0
        var firstOpen = false
        var answersHeld = false
        var fenced = false
        var fenceError: String?
        var outcome: String?
        var answeredAt: UInt64 = 0
    }
    let state = State()
    let box = SimulatorBox((state, simulator))
    var configuration = ClientConfiguration()
    configuration.placementDriverTimeout = .seconds(10)
    let settings = configuration

    // Writer A: makes the stream, opens it and appends (its range stays open); then, once the placement driver's
    // answers to it are held, opens the stream again with a second client.
    let a = simulator.addProcess(name: "writer-a", host: "127.0.2.1")
    a.start(shards: 1) { _, context in
        let (state, simulator) = box.value
        let client = ElasticStreamClient(pd: pd, on: context, configuration: settings)
        var first: StreamWriter?
        while first == nil {
            do {
                if state.stream == 0 { state.stream = try await client.createStream(replicas: 3, ackCount: 2).streamID }
                let writer = try await client.openStream(state.stream)
                _ = try await writer.append([Record(timestamp: 1, value: Array("first".utf8))])
                first = writer
            } catch {
                try? await context.sleep(for: .milliseconds(200))
            }
        }
        // The second client reaches the leader first, so that its open travels on a connection already made (a new
        // one could not be made while answers are held).
        let second = ElasticStreamClient(pd: pd, on: context, configuration: settings)
        _ = try? await second.describeStream(state.stream)
        state.firstOpen = true
        while !state.answersHeld { try? await context.sleep(for: .milliseconds(5)) }
        do {
            _ = try await second.openStream(state.stream)
            state.outcome = "opened"
        } catch {
            state.outcome = "\(error)"
        }
        state.answeredAt = simulator.now
    }

    var deadline = simulator.now + 60_000_000_000
    while !state.firstOpen && simulator.now < deadline && simulator.step() {}
    guard state.firstOpen else { simulator.tearDown(); return ["the first writer never opened its stream"] }

    // The placement driver's answers to A are held from now on; its requests still arrive.
    for node in nodes { simulator.network.block(from: node.host, to: a.host, bothWays: false) }
    state.answersHeld = true
    log("answers to writer-a held")

    // Writer B: a newer writer, after A's open has reached the placement driver: it takes the next epoch and fences
    // the open range on every replica, and goes no further (the range stays unsealed).
    let b = simulator.addProcess(name: "writer-b", host: "127.0.2.2")
    b.start(shards: 1) { _, context in
        let (state, _) = box.value
        try? await context.sleep(for: .milliseconds(300))
        let pdClient = PDClient(addresses: pd, on: context)
        do {
            var open = Elasticstream_V1_OpenStreamRequest()
            open.streamID = state.stream
            let opened = try await pdClient.call(.openStream, open, as: Elasticstream_V1_OpenStreamResponse.self)
            guard let last = opened.ranges.last, !last.sealed else {
                state.fenceError = "no open range to fence: \(opened.ranges)"
                return
            }
            var fence = Elasticstream_V1_SealRangeRequest()
            fence.range = last
            fence.range.sealed = false
            fence.epoch = opened.stream.epoch
            for server in last.servers {
                let shard = RangeRouting.shard(streamID: last.streamID, rangeIndex: last.index,
                                               shardCount: server.shardAddresses.count)
                let rpc = RPCClient(address: server.shardAddresses[shard], on: context)
                if case .failure(let error) = await rpc.call(.sealRange, header: fence, timeout: .seconds(2)) {
                    state.fenceError = "fencing on server \(server.serverID) failed: \(error)"
                }
                await rpc.close()
            }
        } catch {
            state.fenceError = "\(error)"
        }
        state.fenced = true
    }
    deadline = simulator.now + 10_000_000_000
    while !state.fenced && simulator.now < deadline && simulator.step() {}
    var violations: [String] = []
    if let error = state.fenceError { violations.append("the newer writer could not fence: \(error)") }
    guard state.fenced else {
        simulator.tearDown()
        return violations + ["the newer writer did not finish fencing within 10 s"]
    }

    // A's open now gets its (older) epoch, and finds the range fenced by a newer one.
    simulator.network.healAll()
    let healed = simulator.now
    log("healed; writer-a gets its answers")
    deadline = simulator.now + 60_000_000_000
    while state.outcome == nil && simulator.now < deadline && simulator.step() {}
    let took = Double(state.answeredAt - healed) / 1e9
    log("writer-a's second open: \(state.outcome ?? "no answer") after \(took) s")
    if state.outcome == nil {
        violations.append("the stale open did not answer within 60 s of healing")
    } else if !(state.outcome!.contains("fenced")) || took > 5 {
        violations.append("the stale open answered \(state.outcome!) \(String(format: "%.1f", took)) s after healing; "
                          + "it must fail with fenced at once")
    }
    simulator.tearDown()
    return violations
}
