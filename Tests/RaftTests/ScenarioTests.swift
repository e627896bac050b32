import Raft
import Testing

/// A member with a log of the given terms (entry i has term terms[i - 1]) and a hard state.
func member(_ id: NodeID, voters: Set<NodeID>, terms: [UInt64], term: UInt64, configuration: RaftConfiguration =
            RaftConfiguration(electionTicks: 10, heartbeatTicks: 2)) -> RaftNode {
    let entries = terms.enumerated().map { Entry(term: $0.element, index: UInt64($0.offset + 1), data: [UInt8($0.offset)]) }
    return RaftNode(id: id, configuration: configuration,
                    restoring: PersistedState(hardState: HardState(term: term), snapshot: Snapshot(index: 0, term: 0,
                                                                                                    voters: voters),
                                              entries: entries), seed: id)
}

/// Persists and applies nothing; returns the messages of the node's Ready and advances it.
func drain(_ node: inout RaftNode) -> [Message] {
    var messages: [Message] = []
    while node.hasReady {
        let ready = node.ready()
        messages += ready.messages
        node.advance(ready)
    }
    return messages
}

func elect(_ simulation: inout Simulation) -> NodeID? {
    simulation.run(until: 2000) { $0.leader != nil }
    return simulation.leader
}

@Suite struct RaftScenarioTests {
    @Test func threeMembersElectOneLeaderAndReplicate() {
        var simulation = Simulation(members: [1, 2, 3], seed: 7)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        guard let index = simulation.propose(Array("hello".utf8)) else { Issue.record("index: none"); return }
        simulation.run(until: 200) { sim in sim.members.allSatisfy { (sim.appliedBy[$0] ?? 0) >= index } }
        #expect(simulation.members.allSatisfy { (simulation.appliedBy[$0] ?? 0) >= index })
        #expect(simulation.appliedEverywhere[index]?.data == Array("hello".utf8))
        #expect(simulation.nodes.values.filter { $0.role == .leader }.map(\.id) == [leader])
        #expect(simulation.violations.isEmpty)
    }

    /// The paper's figure 8: a leader must not commit an entry of an earlier term by counting replicas, even when a
    /// majority holds it; it commits once an entry of its own term is on a majority.
    @Test func aLeaderCommitsOnlyEntriesOfItsOwnTermByCounting() {
        let voters: Set<NodeID> = [1, 2, 3]
        var leader = member(1, voters: voters, terms: [1, 2], term: 2)
        // Member 1 campaigns (pre-vote, then vote) and wins with member 2's votes.
        for _ in 0..<40 where leader.role == .follower { leader.tick() }
        var out = drain(&leader)
        let preVote = try! #require(out.first { $0.kind == .preVote && $0.to == 2 })
        var grant = Message(kind: .preVoteResponse, from: 2, to: 1, term: preVote.term)
        leader.step(grant)
        out = drain(&leader)
        #expect(leader.role == .candidate && leader.term == 3)
        grant = Message(kind: .voteResponse, from: 2, to: 1, term: 3)
        leader.step(grant)
        out = drain(&leader)
        #expect(leader.role == .leader)
        #expect(leader.lastIndex == 3, "the new leader appends an entry of its term")
        // Member 2 reports holding index 2 (term 2): a majority (1, 2) holds it, but it is of an earlier term.
        var response = Message(kind: .appendResponse, from: 2, to: 1, term: 3)
        response.index = 2
        leader.step(response)
        _ = drain(&leader)
        #expect(leader.commitIndex == 0, "committed \(leader.commitIndex) by counting replicas of a term-2 entry")
        // Once member 2 holds index 3 (term 3), index 3 and everything before it commit.
        response.index = 3
        leader.step(response)
        _ = drain(&leader)
        #expect(leader.commitIndex == 3)
    }

    /// Election restriction: a member whose log is behind cannot win, however often it campaigns.
    @Test func aMemberWithAStaleLogCannotBeElected() {
        var voter = member(2, voters: [1, 2, 3], terms: [1, 1, 2], term: 2)
        var request = Message(kind: .vote, from: 3, to: 2, term: 3)
        request.index = 5
        request.logTerm = 1  // longer, but of an older term
        voter.step(request)
        let answer = try! #require(drain(&voter).first { $0.kind == .voteResponse })
        #expect(answer.reject)
        request.index = 3
        request.logTerm = 2
        voter.step(request)
        let second = try! #require(drain(&voter).first { $0.kind == .voteResponse })
        #expect(!second.reject)
        #expect(voter.vote == 3)
    }

    /// A follower with conflicting entries of an old term: the leader finds where the logs match a term at a time
    /// and the follower's extra entries are replaced.
    @Test func aDivergedFollowerIsRepaired() {
        var simulation = Simulation(members: [1, 2, 3], seed: 11)
        guard let first = elect(&simulation) else { Issue.record("first: none"); return }
        for i in 0..<5 { _ = simulation.propose([UInt8(i)]) }
        simulation.run(steps: 50)
        // The leader is cut off and takes proposals nobody else sees; the others elect a new leader and move on.
        simulation.isolate(first)
        for i in 0..<10 { _ = try? simulation.nodes[first]!.propose([0xEE, UInt8(i)]) }
        simulation.processReadies()
        simulation.run(until: 3000) { sim in sim.leader != nil && sim.leader != first }
        let second = try! #require(simulation.leader)
        #expect(second != first)
        for i in 0..<3 { _ = simulation.propose([0xAA, UInt8(i)]) }
        simulation.run(steps: 50)
        simulation.heal()
        simulation.run(until: 3000) { sim in
            let nodes = sim.members.compactMap { sim.nodes[$0] }
            return nodes.count == 3 && Set(nodes.map(\.lastIndex)).count == 1 && Set(nodes.map(\.commitIndex)).count == 1
        }
        simulation.checkLogMatching()
        #expect(simulation.violations.isEmpty, "\(simulation.violations)")
        let old = simulation.nodes[first]!
        #expect(old.role == .follower)
        let lastIndex = old.lastIndex
        let tail = (1...lastIndex).compactMap { old.entry(at: $0) }.filter { $0.data.first == 0xEE }
        #expect(tail.isEmpty, "the isolated leader's unreplicated entries are gone")
    }

    /// Pre-vote: a member cut off for a long time does not raise its term, so when it comes back the leader keeps
    /// leading.
    @Test func preVoteKeepsARejoiningMemberFromDisruptingTheLeader() {
        var simulation = Simulation(members: [1, 2, 3], seed: 21)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        let term = simulation.nodes[leader]!.term
        let other = simulation.members.first { $0 != leader }!
        simulation.isolate(other)
        simulation.run(steps: 1000)
        #expect(simulation.nodes[other]!.term == term, "the isolated member's term went up")
        simulation.heal()
        simulation.run(steps: 300)
        #expect(simulation.leader == leader)
        #expect(simulation.nodes[leader]!.term == term)
    }

    /// Check-quorum: a leader that cannot reach a majority steps down within an election timeout or two, and the
    /// majority elects another.
    @Test func anIsolatedLeaderStepsDown() {
        var simulation = Simulation(members: [1, 2, 3], seed: 31)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        simulation.isolate(leader)
        simulation.run(steps: 100)
        #expect(simulation.nodes[leader]!.role != .leader)
        simulation.run(until: 2000) { sim in sim.leader != nil && sim.leader != leader }
        #expect(simulation.leader != leader)
        #expect(simulation.violations.isEmpty)
    }

    @Test func leadershipTransfersToAnUpToDateMember() {
        var simulation = Simulation(members: [1, 2, 3], seed: 41)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        for i in 0..<5 { _ = simulation.propose([UInt8(i)]) }
        let target = simulation.members.first { $0 != leader }!
        try! simulation.nodes[leader]!.transferLeadership(to: target)
        simulation.processReadies()
        #expect(throws: RaftError.transferring) { try simulation.nodes[leader]!.propose([1]) }
        simulation.run(until: 200) { $0.leader == target }
        #expect(simulation.leader == target)
        #expect(simulation.nodes[leader]!.role == .follower)
        #expect(simulation.violations.isEmpty)
    }

    /// Read index: a read completes only once a majority confirms the leader; with the followers unreachable it
    /// does not complete, and after they are back it does, at an index covering every committed write.
    @Test func readIndexNeedsAQuorum() {
        var simulation = Simulation(members: [1, 2, 3], seed: 51)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        guard let written = simulation.propose([9]) else { Issue.record("written: none"); return }
        simulation.run(until: 200) { ($0.appliedBy[leader] ?? 0) >= written }
        for other in simulation.members where other != leader { simulation.cut.insert([min(leader, other), max(leader, other)]) }
        try! simulation.nodes[leader]!.readIndex(context: 77)
        simulation.run(steps: 15)
        #expect((simulation.readStates[leader] ?? []).isEmpty, "a read completed without a quorum")
        simulation.cut = []
        simulation.run(until: 200) { !($0.readStates[leader] ?? []).isEmpty }
        let read = try! #require(simulation.readStates[leader]?.first)
        #expect(read.context == 77)
        #expect(read.index >= written)
        #expect(throws: RaftError.self) { try simulation.nodes[simulation.members.first { $0 != simulation.leader }!]!.readIndex(context: 1) }
    }

    /// Adding a member, then removing one (the leader itself): each change commits with the right majority, the new
    /// member catches up, and the group keeps working.
    @Test func membersAreAddedAndRemovedOneAtATime() {
        var simulation = Simulation(members: [1, 2, 3], seed: 61)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        simulation.addEmptyMember(4)
        let add = try! simulation.nodes[leader]!.proposeMembershipChange(.add(4))
        #expect(throws: RaftError.membershipChangePending) {
            try simulation.nodes[leader]!.proposeMembershipChange(.remove(2))
        }
        simulation.processReadies()
        simulation.run(until: 500) { sim in (sim.appliedBy[4] ?? 0) >= add }
        #expect(simulation.nodes[4]!.voters == [1, 2, 3, 4])
        #expect(simulation.nodes[leader]!.voters == [1, 2, 3, 4])
        // Remove the leader: it steps down once the change is applied, and the other three elect one of them.
        simulation.run(steps: 20)
        let remove = try! simulation.nodes[leader]!.proposeMembershipChange(.remove(leader))
        simulation.processReadies()
        simulation.run(until: 3000) { sim in
            (sim.appliedBy[leader] ?? 0) >= remove && sim.leader != nil && sim.leader != leader
        }
        let next = try! #require(simulation.leader)
        #expect(next != leader)
        #expect(simulation.nodes[next]!.voters == Set([1, 2, 3, 4]).subtracting([leader]))
        guard let index = simulation.propose([42]) else { Issue.record("index: none"); return }
        simulation.run(until: 500) { sim in
            sim.members.filter { $0 != leader }.allSatisfy { (sim.appliedBy[$0] ?? 0) >= index }
                && (sim.appliedBy[4] ?? 0) >= index
        }
        #expect((simulation.appliedBy[4] ?? 0) >= index)
        #expect(simulation.violations.isEmpty)
    }

    /// A dead member is replaced: removed (the two live members are a majority of three), then a new member added;
    /// the group of the survivors and the newcomer commits, and the newcomer holds every entry.
    @Test func aDeadMemberIsReplaced() {
        var simulation = Simulation(members: [1, 2, 3], seed: 81)
        guard let leader = elect(&simulation) else { Issue.record("no leader"); return }
        let dead = simulation.members.first { $0 != leader }!
        simulation.crash(dead)
        guard let remove = try? simulation.nodes[leader]!.proposeMembershipChange(.remove(dead)) else {
            Issue.record("remove refused")
            return
        }
        simulation.processReadies()
        simulation.run(until: 500) { ($0.appliedBy[leader] ?? 0) >= remove }
        simulation.addEmptyMember(4)
        guard let add = try? simulation.nodes[leader]!.proposeMembershipChange(.add(4)) else {
            Issue.record("add refused")
            return
        }
        simulation.processReadies()
        simulation.run(until: 1000) { ($0.appliedBy[4] ?? 0) >= add }
        let expected = Set(simulation.members).subtracting([dead]).union([4])
        #expect(simulation.nodes[leader]!.voters == expected)
        #expect(simulation.nodes[4]!.voters == expected)
        guard let index = simulation.propose([7]) else { Issue.record("no proposal"); return }
        simulation.run(until: 500) { sim in expected.allSatisfy { (sim.appliedBy[$0] ?? 0) >= index } }
        #expect(expected.allSatisfy { (simulation.appliedBy[$0] ?? 0) >= index })
        #expect(simulation.violations.isEmpty)
    }

    /// A member that was down while the others compacted their logs catches up by installing a snapshot.
    @Test func aLaggingMemberCatchesUpFromASnapshot() {
        var simulation = Simulation(members: [1, 2, 3], seed: 71)
        guard let leader = elect(&simulation) else { Issue.record("leader: none"); return }
        let lagging = simulation.members.first { $0 != leader }!
        simulation.crash(lagging)
        var last: UInt64 = 0
        for i in 0..<30 { last = simulation.propose([UInt8(i)]) ?? last }
        simulation.run(until: 500) { sim in (sim.appliedBy[leader] ?? 0) >= last }
        // The leader's log up to what it applied becomes a snapshot.
        var node = simulation.nodes[leader]!
        node.compact(through: node.appliedIndex, data: Array("image".utf8))
        simulation.nodes[leader] = node
        #expect(simulation.nodes[leader]!.snapshotIndex >= last)
        simulation.restart(lagging)
        simulation.run(until: 1000) { sim in (sim.nodes[lagging]?.commitIndex ?? 0) >= last }
        let caughtUp = simulation.nodes[lagging]!
        #expect(caughtUp.snapshotIndex >= last, "the member did not install the snapshot")
        #expect(caughtUp.commitIndex >= last)
        #expect(simulation.violations.isEmpty)
    }
}
