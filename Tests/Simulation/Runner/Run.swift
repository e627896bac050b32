import CSupport
import Client
import Reactor
import Records
import Simulation
import Store

/// How hard a run is on the cluster.
enum FaultLevel: String {
    /// No faults: the workload and the checks only.
    case none
    /// Crashes, pauses, partitions, resets, clock jumps and drift, slow and failing disks, a node with corrupted
    /// reads in some seeds.
    case mixed
}

struct RunOptions {
    var faults = FaultLevel.mixed
    /// Virtual seconds of writing under faults.
    var faultSeconds: UInt64 = 20
    /// Virtual seconds the cluster gets, once the faults stop, to make progress again.
    var livenessSeconds: UInt64 = 30
    var verbose = false
    /// Starts a process that hands a job to Swift's global executor: the run must fail (a check of the check).
    var strayJob = false
    /// Leaves corrupted reads and misdirected writes out (to tell their effects from the other faults').
    var corruption = true
    enum Misdirection { case sometimes, always }
    var misdirection = Misdirection.sometimes
}

struct RunResult {
    var seed: UInt64
    var violations: [String]
    var traceHash: UInt64
    var simulatedNanoseconds: UInt64
    var steps: UInt64
    var jobs: UInt64
    var acknowledged: Int
    var failed: Int
    var crashes: Int
    var summary: String
}

/// One seed: boots the cluster and the writers, injects faults for `faultSeconds`, heals everything, checks that
/// writes make progress again, stops the writers, reads every stream back and checks the invariants.
func runSeed(_ seed: UInt64, options: RunOptions) -> RunResult {
    let simulator = Simulator(seed: seed)
    var shape = ClusterShape()
    let durability: WALConfiguration.Durability = simulator.chance(0.5) ? .dsyncWrite : .fdatasync
    // Some seeds give one node a disk that misdirects writes: a fourth node lets the cluster go on placing three
    // replicas while that one refuses to start on the damage it finds.
    let misdirection = options.faults == .mixed && options.corruption
        && (simulator.chance(0.15) || options.misdirection == .always)
    if misdirection { shape.nodes = 4 }
    let builder = ClusterBuilder(shape: shape, durability: durability)
    let nodes = (1...shape.nodes).map { i in
        SimulatedNode(index: i, process: simulator.addProcess(name: "node-\(i)", host: "127.0.1.\(i)"))
    }
    let ledger = Ledger()
    let checks = Checks()
    let pd = nodes.prefix(shape.members).map(\.pdAddress)
    var crashes = 0

    func log(_ message: @autoclosure () -> String) {
        if options.verbose {
            print(String(format: "[%9.3f] ", Double(simulator.now) / 1e9) + message())
        }
    }

    // Faults every machine has from the start: a little clock drift, and in some seeds one node whose disk returns
    // corrupted reads now and then (one node only: the replicas on the others must cover for it).
    if options.faults == .mixed {
        for node in nodes { node.process.driftPPM = Int64(simulator.below(401)) - 200 }
        if misdirection {
            let victim = nodes[Int(simulator.below(UInt64(nodes.count)))]
            victim.process.diskFaults.corruptionRate = 0.002
            victim.process.diskFaults.misdirectionRate = 0.002
            log("\(victim.process.name) misdirects writes and reads corrupted blocks now and then")
        } else if simulator.chance(0.3) {
            let victim = nodes[Int(simulator.below(UInt64(nodes.count)))]
            victim.process.diskFaults.corruptionRate = options.corruption ? 0.002 : 0
            log("\(victim.process.name) reads corrupted blocks now and then")
        }
    }
    if options.verbose { simulator.network.debug = { log($0) } }
    for node in nodes { builder.boot(node, all: nodes) }
    let writers = (1...shape.writers).map { i in
        simulator.addProcess(name: "writer-\(i)", host: "127.0.2.\(i)")
    }
    if options.strayJob {
        let rogue = simulator.addProcess(name: "rogue", host: "127.0.4.1")
        rogue.start { _, _ in
            Task.detached { print("a stray job ran") }
        }
    }
    for (i, process) in writers.enumerated() {
        Writer(number: i + 1, simulator: simulator, ledger: ledger, pd: pd).start(on: process)
    }

    /// Nodes down (crashed, waiting for their restart).
    var restartAt: [Int: UInt64] = [:]
    var strayReported = false
    let second: UInt64 = 1_000_000_000
    let faultEnd = options.faultSeconds * second

    func sampleAndRestart() {
        checks.sample(nodes)
        if simulator.strayJobs > 0 && !strayReported {
            strayReported = true
            checks.fail("a job reached Swift's global executor (at \(simulator.now / 1_000_000) ms)")
        }
        for node in nodes {
            if let at = restartAt[node.index], simulator.now >= at {
                restartAt[node.index] = nil
                log("restart \(node.process.name)")
                builder.boot(node, all: nodes)
            }
        }
        // A process that ended itself (a failed boot, a fatal storage failure), as `elastic-stream` exits, is
        // started again a second later, as its supervisor would.
        for node in nodes where !node.process.isAlive && restartAt[node.index] == nil {
            log("\(node.process.name) exited: \(node.exitReason ?? "?")")
            node.exitReason = nil
            builder.crash(node)
            restartAt[node.index] = simulator.now + second
        }
    }

    // Phase 1: writes under faults.
    var nextSample: UInt64 = 0
    var nextFault: UInt64 = 2 * second
    var heals: [(at: UInt64, action: () -> Void)] = []
    while simulator.now < faultEnd {
        if !simulator.step() { break }
        if simulator.now >= nextSample {
            nextSample = simulator.now + 20_000_000
            sampleAndRestart()
            heals.removeAll { heal in
                if heal.at <= simulator.now { heal.action(); return true }
                return false
            }
        }
        guard options.faults == .mixed, simulator.now >= nextFault else { continue }
        nextFault = simulator.now + simulator.between(200_000_000, 1_500_000_000)
        let node = nodes[Int(simulator.below(UInt64(nodes.count)))]
        let down = nodes.filter { !$0.process.isAlive }.count
        switch simulator.below(100) {
        case 0..<18 where down == 0 && node.process.isAlive:
            log("crash \(node.process.name)")
            builder.crash(node)
            crashes += 1
            restartAt[node.index] = simulator.now + simulator.between(300_000_000, 5 * second)
        case 18..<22 where down == 0:
            // Two at once: acknowledged records are durable on both, so nothing may be lost, only delayed.
            let other = nodes[(node.index) % nodes.count]
            log("crash \(node.process.name) and \(other.process.name)")
            for victim in [node, other] where victim.process.isAlive {
                builder.crash(victim)
                crashes += 1
                restartAt[victim.index] = simulator.now + simulator.between(300_000_000, 4 * second)
            }
        case 22..<36 where node.process.isAlive && !node.process.isPaused:
            let length = simulator.between(100_000_000, 6 * second)
            log("pause \(node.process.name) for \(length / 1_000_000) ms")
            node.process.setPaused(true)
            heals.append((simulator.now + length, { node.process.setPaused(false) }))
        case 36..<52:
            let length = simulator.between(200_000_000, 5 * second)
            let bothWays = simulator.chance(0.6)
            log("cut \(node.process.name) off \(bothWays ? "both ways" : "one way") for \(length / 1_000_000) ms")
            for other in nodes where other !== node {
                simulator.network.block(from: node.host, to: other.host, bothWays: bothWays)
            }
            for writer in writers where simulator.chance(0.5) {
                simulator.network.block(from: writer.host, to: node.host, bothWays: bothWays)
            }
            heals.append((simulator.now + length, { simulator.network.healAll() }))
        case 52..<66:
            log("reset a connection")
            simulator.network.resetRandomConnection()
        case 66..<74:
            let jump = Int64(simulator.below(60_000)) - 30_000
            log("\(node.process.name)'s wall clock jumps \(jump) ms")
            node.process.wallClockOffsetMilliseconds += jump
        case 74..<84:
            let length = simulator.between(500_000_000, 4 * second)
            log("\(node.process.name)'s disk is slow for \(length / 1_000_000) ms")
            node.process.diskFaults.slowRate = 0.2
            heals.append((simulator.now + length, { node.process.diskFaults.slowRate = 0 }))
        case 84..<90:
            let length = simulator.between(200_000_000, 2 * second)
            log("\(node.process.name)'s disk fails some requests for \(length / 1_000_000) ms")
            node.process.diskFaults.errorRate = 0.01
            heals.append((simulator.now + length, { node.process.diskFaults.errorRate = 0 }))
        case 90..<100:
            let length = simulator.between(500_000_000, 3 * second)
            log("the network is slow for \(length / 1_000_000) ms")
            simulator.network.slowRate = 0.1
            heals.append((simulator.now + length, { simulator.network.slowRate = 0 }))
        default:
            break
        }
    }

    // Phase 2: everything heals; writes must make progress again within the bound.
    log("heal everything")
    for heal in heals { heal.action() }
    heals = []
    simulator.network.healAll()
    simulator.network.slowRate = 0
    for node in nodes {
        node.process.setPaused(false)
        node.process.diskFaults.slowRate = 0
        node.process.diskFaults.errorRate = 0
        if !node.process.isAlive && restartAt[node.index] == nil { restartAt[node.index] = simulator.now }
    }
    let healed = simulator.now
    let livenessDeadline = healed + options.livenessSeconds * second
    var progressed = false
    while simulator.now < livenessDeadline {
        if !simulator.step() { break }
        if simulator.now >= nextSample {
            nextSample = simulator.now + 20_000_000
            sampleAndRestart()
        }
        // Every writer's stream must take new records: one acknowledgement after healing is not enough when a
        // writer is stuck; count acknowledgements per stream.
        if (1...shape.writers).allSatisfy({ (ledger.lastAcknowledgedBy[$0] ?? 0) > healed + 2 * second }) {
            progressed = true
            break
        }
    }
    if !progressed {
        checks.fail("liveness: not every writer had an append acknowledged within \(options.livenessSeconds) s of healing "
                    + "(failures: \(ledger.failures.sorted { $0.key < $1.key }); last acknowledged: "
                    + "\(ledger.lastAcknowledgedBy.sorted { $0.key < $1.key }.map { "writer \($0.key) at \($0.value / 1_000_000) ms" }); "
                    + "doing: \(ledger.doing.sorted { $0.key < $1.key }.map { "writer \($0.key) \($0.value)" }))")
    }

    // Phase 3: writers stop; a reader reads every stream back.
    ledger.stopWriting = true
    simulator.run(until: simulator.now + 5 * second)
    let reader = simulator.addProcess(name: "reader", host: "127.0.3.1")
    final class ReadBack: @unchecked Sendable {
        var records: [UInt64: [ReadRecord]] = [:]
        /// Where each stream starts (after its trims), as the placement driver said before reading it.
        var starts: [UInt64: UInt64] = [:]
        var errors: [String] = []
        var replicas = ReplicaCheck.Outcome()
        var done = false
    }
    let readBack = ReadBack()
    let streams = ledger.streams
    let box = SimulatorBox(readBack)
    // A node whose disk lost acknowledged data refuses to start (the damage is reported, never skipped): its replicas
    // are not asked. Any other node is up again by now.
    let downForGood = SimulatorBox({ (host: String) -> Bool in
        nodes.contains { $0.host == host && $0.downForGood }
    })
    reader.start(shards: 1) { _, context in
        let readBack = box.value
        var configuration = ClientConfiguration()
        configuration.placementDriverTimeout = .seconds(5)
        let client = ElasticStreamClient(pd: pd, on: context, configuration: configuration)
        for stream in streams {
            var records: [ReadRecord] = []
            var next: UInt64 = 0
            for attempt in 0..<20 {
                do {
                    next = try await client.describeStream(stream).startOffset
                    break
                } catch {
                    if attempt == 19 { readBack.errors.append("stream \(stream): describing it failed: \(error)") }
                    try? await context.sleep(for: .milliseconds(500))
                }
            }
            readBack.starts[stream] = next
            var attempts = 0
            while true {
                do {
                    let batch = try await client.read(stream: stream, from: next, maxBytes: 256 << 10)
                    if batch.isEmpty { break }
                    records += batch
                    next = batch.last!.offset + 1
                    attempts = 0
                } catch {
                    attempts += 1
                    if attempts >= 20 {
                        readBack.errors.append("stream \(stream) from \(next): \(error)")
                        break
                    }
                    try? await context.sleep(for: .milliseconds(500))
                }
            }
            readBack.records[stream] = records
        }
        readBack.replicas = await ReplicaCheck.run(client: client, streams: streams, read: readBack.records,
                                                   starts: readBack.starts, skip: downForGood.value, context: context)
        readBack.done = true
    }
    let readDeadline = simulator.now + 300 * second
    while simulator.now < readDeadline && !readBack.done {
        if !simulator.step() { break }
        if simulator.now >= nextSample {
            nextSample = simulator.now + 20_000_000
            sampleAndRestart()
        }
    }
    if !readBack.done { checks.fail("liveness: reading the streams back (and every replica of every sealed range) did not finish within 300 s") }
    if options.verbose {
        for node in nodes {
            guard let member = node.member, let reactor = node.process.reactor else {
                log("\(node.process.name): no member (alive: \(node.process.isAlive))")
                continue
            }
            reactor.shards[0].runSimulated {
                log("\(node.process.name): role \(member.role) term \(member.term) leader \(member.leader) commit \(member.commitIndex) applied \(member.appliedIndex) \(member.waiting) \(node.server?.diagnostics ?? "")")
            }
        }
    }
    for error in readBack.errors { checks.fail("read back: \(error)") }
    // Replicas on a node down for good (as it turned out by the end) are not expected to answer.
    let downHosts = Set(nodes.filter(\.downForGood).map(\.host))
    for problem in readBack.replicas.problems.filter({ !downHosts.contains($0.host) }).prefix(5) {
        checks.fail("replica convergence: \(problem.message)")
    }
    for stream in streams.sorted() {
        checks.checkStream(stream, read: readBack.records[stream] ?? [], start: readBack.starts[stream] ?? 0,
                           ledger: ledger)
    }
    checks.checkHistory(ledger)
    if simulator.strayJobs > 0 && !strayReported {
        checks.fail("\(simulator.strayJobs) jobs reached Swift's global executor")
    }

    let misdirected = nodes.map(\.process.misdirectedWrites).reduce(0, +)
    // Only a disk that misdirected writes may keep a node down, and only by a reported corruption.
    let downNodes = nodes.filter(\.downForGood)
    for node in downNodes {
        let reason = node.bootFailures.last ?? "?"
        if node.process.misdirectedWrites == 0 || !reason.contains("corrupt") {
            checks.fail("liveness: \(node.process.name) cannot start once everything healed: \(reason)")
        }
    }
    let bricked = downNodes.map { node -> String in
        let reason = node.bootFailures.last ?? ""
        let what = [("WAL corruption", "wal"), ("Raft log corruption", "raft-log"), ("server-id", "server-id"),
                    ("/shards", "shard-count"), ("checkpoint", "checkpoint")].first { reason.contains($0.0) }?.1
        return "\(node.process.name):\(what ?? "other")"
    }
    let summary = "trims=\(ledger.trims) durability=\(durability.rawValue) nodes=\(shape.nodes) misdirected-writes=\(misdirected) "
        + "down-for-good=\(bricked.isEmpty ? "none" : bricked.joined(separator: ",")) streams=\(streams.count) opens=\(ledger.opens.count) "
        + "sealed-ranges=\(readBack.replicas.rangesChecked) replicas=\(readBack.replicas.replicasChecked) "
        + "replicas-skipped=\(readBack.replicas.replicasSkipped) "
        + "committed-entries=\(checks.committedEntriesChecked) "
        + "read=\(readBack.records.values.reduce(0) { $0 + $1.count }) connections=\(simulator.network.connectionsMade) "
        + "resets=\(simulator.network.resets) failures=\(ledger.failures.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))"
    let result = RunResult(seed: seed, violations: checks.violations, traceHash: simulator.traceHash,
                           simulatedNanoseconds: simulator.now, steps: simulator.steps, jobs: simulator.jobsRun,
                           acknowledged: ledger.acknowledged.values.reduce(0) { $0 + $1.count },
                           failed: ledger.appendsFailed, crashes: crashes, summary: summary)
    // Everything the run made stays reachable from jobs that will never run; crash every process so that nothing
    // of this seed runs in the next one.
    simulator.tearDown()
    return result
}
