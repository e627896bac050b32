import Raft
import TestSupport

/// An in-process Raft group on a simulated network, driven step by step from one seed: messages are delayed,
/// dropped, duplicated and reordered; members are partitioned, crashed (losing everything not persisted) and
/// restarted. Every step checks the safety properties; a violation is recorded with the step, so a failing seed
/// reproduces from its number.
struct Simulation {
    struct Disk {
        var hardState = HardState()
        var snapshot: Snapshot
        var entries: [Entry] = []
    }

    struct Faults {
        var dropRate = 0.0
        var duplicateRate = 0.0
        /// Delivery delay in steps, uniform in 0...maxDelay (so messages reorder).
        var maxDelay = 0
        var partitionRate = 0.0
        var crashRate = 0.0
        var compactEvery = 0

        static let none = Faults()
        static let harsh = Faults(dropRate: 0.1, duplicateRate: 0.05, maxDelay: 6, partitionRate: 0.01,
                                  crashRate: 0.01, compactEvery: 40)
    }

    private struct InFlight {
        var deliverAt: Int
        var message: Message
    }

    let members: [NodeID]
    var configuration: RaftConfiguration
    var faults: Faults
    var nodes: [NodeID: RaftNode] = [:]
    var disks: [NodeID: Disk] = [:]
    private var network: [InFlight] = []
    /// Pairs that cannot talk (both directions).
    var cut: Set<[NodeID]> = []
    var rng: SeededGenerator
    private(set) var step = 0
    private var restarts: UInt64 = 0

    // Safety bookkeeping.
    private(set) var leaderOfTerm: [UInt64: NodeID] = [:]
    /// Every entry any member applied: index → (term, data). All members must apply the same.
    private(set) var appliedEverywhere: [UInt64: Entry] = [:]
    private(set) var appliedBy: [NodeID: UInt64] = [:]
    private(set) var violations: [String] = []
    private(set) var readStates: [NodeID: [ReadState]] = [:]
    private(set) var proposals = 0

    init(members: [NodeID], seed: UInt64, faults: Faults = .none,
         configuration: RaftConfiguration = RaftConfiguration(electionTicks: 10, heartbeatTicks: 2, maxInflight: 8,
                                                              maxMessageBytes: 64)) {
        self.members = members
        self.faults = faults
        self.configuration = configuration
        rng = SeededGenerator(seed: seed)
        for member in members {
            let state = PersistedState.bootstrap(voters: Set(members))
            disks[member] = Disk(hardState: state.hardState, snapshot: state.snapshot, entries: state.entries)
            nodes[member] = RaftNode(id: member, configuration: configuration, restoring: state, seed: seed &+ member)
        }
    }

    /// Adds a member that starts empty and learns the configuration from the leader.
    mutating func addEmptyMember(_ member: NodeID) {
        let state = PersistedState.joining
        disks[member] = Disk(hardState: state.hardState, snapshot: state.snapshot, entries: state.entries)
        nodes[member] = RaftNode(id: member, configuration: configuration, restoring: state, seed: rng.next())
    }

    var leader: NodeID? {
        nodes.values.filter { $0.role == .leader }.max { $0.term < $1.term }?.id
    }

    // MARK: - Driving

    /// One step: every live member ticks (every other step), due messages are delivered, and every member's Ready
    /// is persisted, sent, applied and advanced. Faults are injected at their rates.
    mutating func runStep() {
        step += 1
        injectFaults()
        if step % 2 == 0 {
            for member in nodes.keys.sorted() { nodes[member]!.tick() }
        }
        deliver()
        processReadies()
        if faults.compactEvery > 0 && step % faults.compactEvery == 0 { compactSome() }
    }

    mutating func run(steps: Int) {
        for _ in 0..<steps { runStep() }
    }

    /// Runs until `condition` holds or `limit` steps pass; returns whether it held.
    @discardableResult
    mutating func run(until limit: Int, _ condition: (Simulation) -> Bool) -> Bool {
        for _ in 0..<limit {
            if condition(self) { return true }
            runStep()
        }
        return condition(self)
    }

    mutating func propose(_ data: [UInt8]) -> UInt64? {
        guard let leader, let index = try? nodes[leader]!.propose(data) else { return nil }
        proposals += 1
        processReadies()
        return index
    }

    private mutating func deliver() {
        var due: [Message] = []
        var later: [InFlight] = []
        for inFlight in network {
            if inFlight.deliverAt <= step { due.append(inFlight.message) } else { later.append(inFlight) }
        }
        network = later
        for message in due {
            guard nodes[message.to] != nil, !cut.contains(pair(message.from, message.to)) else { continue }
            nodes[message.to]!.step(message)
        }
    }

    private func pair(_ a: NodeID, _ b: NodeID) -> [NodeID] { a < b ? [a, b] : [b, a] }

    mutating func processReadies() {
        var again = true
        while again {
            again = false
            for member in nodes.keys.sorted() where nodes[member]!.hasReady {
                again = true
                checkLeader(member)
                let ready = nodes[member]!.ready()
                persist(member, ready)
                for message in ready.messages { send(message) }
                if let snapshot = ready.snapshot { appliedBy[member] = snapshot.index }
                for entry in ready.committed { apply(member, entry) }
                readStates[member, default: []] += ready.readStates
                nodes[member]!.advance(ready)
                checkLeader(member)
            }
        }
    }

    private mutating func persist(_ member: NodeID, _ ready: Ready) {
        var disk = disks[member]!
        if let hard = ready.hardState { disk.hardState = hard }
        if let snapshot = ready.snapshot {
            disk.snapshot = snapshot
            disk.entries.removeAll { $0.index <= snapshot.index }
            if let first = disk.entries.first, first.index != snapshot.index + 1 { disk.entries = [] }
        }
        if let first = ready.entries.first {
            disk.entries.removeAll { $0.index >= first.index }
            disk.entries += ready.entries
        }
        disks[member] = disk
    }

    private mutating func send(_ message: Message) {
        if faults.dropRate > 0 && Double.random(in: 0..<1, using: &rng) < faults.dropRate { return }
        let copies = faults.duplicateRate > 0 && Double.random(in: 0..<1, using: &rng) < faults.duplicateRate ? 2 : 1
        for _ in 0..<copies {
            let delay = faults.maxDelay > 0 ? Int.random(in: 0...faults.maxDelay, using: &rng) : 0
            network.append(InFlight(deliverAt: step + delay, message: message))
        }
    }

    // MARK: - Faults

    private mutating func injectFaults() {
        if faults.partitionRate > 0 && Double.random(in: 0..<1, using: &rng) < faults.partitionRate {
            if cut.isEmpty || Bool.random(using: &rng) {
                // Isolate one member, or split into two groups.
                let victim = members.randomElement(using: &rng)!
                for other in members where other != victim { cut.insert(pair(victim, other)) }
            } else {
                cut = []
            }
        }
        if faults.crashRate > 0 && Double.random(in: 0..<1, using: &rng) < faults.crashRate {
            let member = members.randomElement(using: &rng)!
            if nodes[member] != nil { crash(member) } else { restart(member) }
        }
        // Crashed members come back after a while.
        for member in members where nodes[member] == nil && Double.random(in: 0..<1, using: &rng) < 0.01 {
            restart(member)
        }
    }

    /// Loses everything not persisted: the member restarts from its disk alone.
    mutating func crash(_ member: NodeID) {
        nodes[member] = nil
    }

    mutating func restart(_ member: NodeID) {
        let disk = disks[member]!
        restarts += 1
        nodes[member] = RaftNode(id: member, configuration: configuration,
                                 restoring: PersistedState(hardState: disk.hardState, snapshot: disk.snapshot,
                                                           entries: disk.entries),
                                 seed: rng.next())
        appliedBy[member] = disk.snapshot.index
    }

    mutating func heal() {
        cut = []
        for member in members where nodes[member] == nil { restart(member) }
    }

    mutating func isolate(_ member: NodeID) {
        for other in nodes.keys where other != member { cut.insert(pair(member, other)) }
    }

    /// Compacts a random live member's log up to what it applied, as a state machine snapshot would.
    private mutating func compactSome() {
        guard let member = nodes.keys.sorted().randomElement(using: &rng), var node = nodes[member] else { return }
        let applied = node.appliedIndex
        guard applied > node.snapshotIndex, let entry = node.entry(at: applied) else { return }
        let voters = node.voters
        node.compact(through: applied, data: Array("state@\(applied)".utf8))
        nodes[member] = node
        var disk = disks[member]!
        disk.snapshot = Snapshot(index: applied, term: entry.term, voters: voters, data: Array("state@\(applied)".utf8))
        disk.entries.removeAll { $0.index <= applied }
        disks[member] = disk
    }

    /// Each member's view, for failure messages.
    func describe() -> String {
        members.map { member in
            guard let node = nodes[member] else { return "\(member): down" }
            return "\(member): \(node.role) term \(node.term) leader \(node.leader) vote \(node.vote) commit \(node.commitIndex) "
                + "last \(node.lastIndex)/\(node.lastTerm) applied \(node.appliedIndex) snapshot \(node.snapshotIndex) "
                + "voters \(node.voters.sorted()) match \(node.matchIndexes.sorted { $0.key < $1.key })"
        }.joined(separator: "; ") + "; in flight \(network.count)"
    }

    // MARK: - Safety

    private mutating func apply(_ member: NodeID, _ entry: Entry) {
        let last = appliedBy[member] ?? 0
        if entry.index != last + 1 {
            violations.append("step \(step): \(member) applied \(entry.index) after \(last)")
        }
        appliedBy[member] = entry.index
        if let known = appliedEverywhere[entry.index] {
            if known != entry {
                violations.append("step \(step): state machine safety: \(member) applied \(entry) at \(entry.index), another member applied \(known)")
            }
        } else {
            appliedEverywhere[entry.index] = entry
        }
    }

    private mutating func checkLeader(_ member: NodeID) {
        guard let node = nodes[member], node.role == .leader else { return }
        if let other = leaderOfTerm[node.term] {
            if other != member {
                violations.append("step \(step): election safety: \(member) and \(other) both lead term \(node.term)")
            }
        } else {
            leaderOfTerm[node.term] = member
            // Leader completeness: every entry applied anywhere is in the new leader's log.
            for (index, entry) in appliedEverywhere where index > node.snapshotIndex {
                if node.entry(at: index) != entry {
                    violations.append("step \(step): leader completeness: \(member) leads term \(node.term) without applied entry \(index)")
                }
            }
        }
    }

    /// Log matching: if two logs hold an entry with the same index and term, they are identical up to it.
    mutating func checkLogMatching() {
        let live = nodes.keys.sorted()
        for (i, a) in live.enumerated() {
            for b in live[(i + 1)...] {
                let na = nodes[a]!, nb = nodes[b]!
                let low = max(na.snapshotIndex, nb.snapshotIndex) + 1
                let high = min(na.lastIndex, nb.lastIndex)
                guard low <= high else { continue }
                var matchedAt: UInt64?
                for index in stride(from: high, through: low, by: -1) {
                    if na.entry(at: index)?.term == nb.entry(at: index)?.term { matchedAt = index; break }
                }
                guard let top = matchedAt else { continue }
                for index in low...top where na.entry(at: index) != nb.entry(at: index) {
                    violations.append("step \(step): log matching: \(a) and \(b) agree at \(top) but differ at \(index)")
                    break
                }
            }
        }
    }
}
