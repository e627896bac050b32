/// The Raft core of one member, in the style of etcd's raft library: inputs are ticks (`tick`), messages from peers
/// (`step`) and requests (`propose`, `proposeMembershipChange`, `readIndex`, `transferLeadership`, `compact`); the
/// outputs gather in a `Ready` (what to persist, send and apply) that the driver takes with `ready()` and
/// acknowledges with `advance`. No I/O, no clock, no threads: deterministic for a given seed, which is what the
/// simulation tests rely on.
///
/// Elections use pre-vote (a member first asks whether it would win, without anyone changing term) and check-quorum
/// (a leader that has not heard from a majority within an election timeout steps down; a member that heard from a
/// leader within one ignores vote requests). A leader commits only entries of its own term by counting replicas
/// (older ones commit with them: the paper's figure 8). Reads are linearizable through read index. Membership
/// changes add or remove one voter at a time and take effect when applied.
public struct RaftNode: Sendable {
    public let id: NodeID
    public let configuration: RaftConfiguration

    public private(set) var term: UInt64
    public private(set) var vote: NodeID
    public private(set) var role: Role = .follower
    /// Who this member believes leads (0: unknown).
    public private(set) var leader: NodeID = 0
    public private(set) var voters: Set<NodeID>

    var log: RaftLog
    private var progress: [NodeID: Progress] = [:]
    private var votes: [NodeID: Bool] = [:]
    private var electionElapsed = 0
    private var heartbeatElapsed = 0
    private var randomizedElectionTimeout = 0
    private var random: SplitMix64
    /// The index of the last membership change in the log (one at a time: none may be proposed above `applied`).
    private var pendingMembershipIndex: UInt64 = 0
    private var transferee: NodeID = 0

    // Read index: requests wait for the current term's first commit, then for a quorum of heartbeat responses.
    private var readSequence: UInt64 = 0
    private var pendingReads: [(sequence: UInt64, context: UInt64, index: UInt64)] = []
    private var waitingReads: [UInt64] = []
    private var readAcks: [NodeID: UInt64] = [:]

    private var messages: [Message] = []
    private var readStates: [ReadState] = []
    private var persistedHardState: HardState

    public init(id: NodeID, configuration: RaftConfiguration = RaftConfiguration(), restoring state: PersistedState,
                seed: UInt64) {
        self.id = id
        self.configuration = configuration
        log = RaftLog(state)
        term = state.hardState.term
        vote = state.hardState.vote
        voters = state.snapshot.voters
        persistedHardState = state.hardState
        random = SplitMix64(seed: seed ^ (id &* 0x9E37_79B9_7F4A_7C15))
        // Membership changes in the log but not applied yet take effect when they are applied; those applied
        // before the restart are in the snapshot's voters or are re-applied from the log.
        resetElectionTimeout()
    }

    // MARK: - Accessors

    public var commitIndex: UInt64 { log.committed }
    public var appliedIndex: UInt64 { log.applied }
    public var lastIndex: UInt64 { log.lastIndex }
    public var lastTerm: UInt64 { log.lastTerm }
    public var snapshotIndex: UInt64 { log.snapshot.index }
    /// The snapshot the log starts after.
    public var snapshot: Snapshot { log.snapshot }
    public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
    public var isPromotable: Bool { voters.contains(id) }
    /// The match index of every follower the leader tracks (for tests and status).
    public var matchIndexes: [NodeID: UInt64] { progress.mapValues(\.match) }
    public func entry(at index: UInt64) -> Entry? { log.entry(index) }

    private var quorum: Int { voters.count / 2 + 1 }

    // MARK: - Inputs

    public mutating func tick() {
        if role == .leader {
            tickLeader()
        } else {
            electionElapsed += 1
            if isPromotable && electionElapsed >= randomizedElectionTimeout {
                electionElapsed = 0
                campaign(transfer: false)
            }
        }
    }

    private mutating func tickLeader() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= configuration.electionTicks {
            electionElapsed = 0
            if configuration.checkQuorum {
                let active = voters.filter { $0 == id || progress[$0]?.recentActive == true }.count
                for key in progress.keys { progress[key]!.recentActive = false }
                if active < quorum {
                    becomeFollower(term: term, leader: 0)
                    return
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            transferee = 0
        }
        if heartbeatElapsed >= configuration.heartbeatTicks {
            heartbeatElapsed = 0
            broadcastHeartbeat(context: readSequence)
        }
    }

    /// Appends a command to the log (leader only) and returns its index.
    @discardableResult
    public mutating func propose(_ data: [UInt8]) throws(RaftError) -> UInt64 {
        try appendProposal(kind: .normal, data: data)
    }

    /// Proposes adding or removing one voter. One change at a time: refused while an earlier one is not applied.
    @discardableResult
    public mutating func proposeMembershipChange(_ change: MembershipChange) throws(RaftError) -> UInt64 {
        guard role == .leader else { throw .notLeader(leader: leader) }
        if pendingMembershipIndex > log.applied { throw .membershipChangePending }
        switch change {
        case .add(let member):
            if voters.contains(member) { throw .invalidMembershipChange("\(member) is already a voter") }
            if member == 0 { throw .invalidMembershipChange("0 is not a member id") }
        case .remove(let member):
            if !voters.contains(member) { throw .invalidMembershipChange("\(member) is not a voter") }
            if voters.count == 1 { throw .invalidMembershipChange("the last voter cannot be removed") }
        }
        let index = try appendProposal(kind: .configuration, data: change.encoded())
        pendingMembershipIndex = index
        return index
    }

    private mutating func appendProposal(kind: EntryKind, data: [UInt8]) throws(RaftError) -> UInt64 {
        guard role == .leader else { throw .notLeader(leader: leader) }
        guard transferee == 0 else { throw .transferring }
        let entry = Entry(term: term, index: log.lastIndex + 1, kind: kind, data: data)
        log.append([entry])
        broadcastAppend()
        return entry.index
    }

    /// Asks for a linearizable read: a `ReadState` with `context` comes out in a later Ready once this member is
    /// confirmed leader by a quorum; reads may be served once the state machine has applied its index.
    public mutating func readIndex(context: UInt64) throws(RaftError) {
        guard role == .leader else { throw .notLeader(leader: leader) }
        // Until an entry of this term is committed, this leader's commit index may be behind the real one.
        guard log.term(log.committed) == term else {
            waitingReads.append(context)
            return
        }
        startRead(context)
    }

    private mutating func startRead(_ context: UInt64) {
        if voters == [id] {
            readStates.append(ReadState(context: context, index: log.committed))
            return
        }
        readSequence += 1
        pendingReads.append((readSequence, context, log.committed))
        readAcks[id] = readSequence
        broadcastHeartbeat(context: readSequence)
    }

    /// Hands leadership to `target` once its log is up to date (it then campaigns at once, without pre-vote).
    public mutating func transferLeadership(to target: NodeID) throws(RaftError) {
        guard role == .leader else { throw .notLeader(leader: leader) }
        guard target != id, voters.contains(target) else {
            throw .invalidMembershipChange("\(target) is not another voter")
        }
        transferee = target
        electionElapsed = 0
        if progress[target]?.match == log.lastIndex {
            send(Message(kind: .timeoutNow, from: id, to: target, term: term))
        } else {
            sendAppend(to: target)
        }
    }

    /// Replaces the log up to `index` (applied) with a snapshot whose state machine image is `data`.
    public mutating func compact(through index: UInt64, data: [UInt8]) {
        log.compact(through: index, voters: voters, data: data)
    }

    // MARK: - Output

    public var hasReady: Bool {
        !messages.isEmpty || !readStates.isEmpty || hardState != persistedHardState || !log.unstableEntries.isEmpty
            || log.unstableSnapshot != nil || !log.committedToApply().isEmpty
    }

    /// What to persist, send and apply now. Call `advance` with it once done.
    public mutating func ready() -> Ready {
        var ready = Ready()
        let hard = hardState
        if hard != persistedHardState { ready.hardState = hard }
        ready.entries = log.unstableEntries
        ready.snapshot = log.unstableSnapshot
        ready.committed = log.committedToApply()
        ready.messages = messages
        ready.readStates = readStates
        messages = []
        readStates = []
        return ready
    }

    /// The driver persisted, sent and applied `ready`.
    public mutating func advance(_ ready: Ready) {
        if let hard = ready.hardState { persistedHardState = hard }
        if let snapshot = ready.snapshot { log.stabilizeSnapshot(snapshot.index) }
        if let last = ready.entries.last { log.stabilize(through: last.index, term: last.term) }
        for entry in ready.committed where entry.index > log.applied {
            log.applied = entry.index
            if entry.kind == .configuration, let change = MembershipChange(entry.data) { apply(change) }
        }
        if role == .leader {
            // The leader counts its own copy only once it is on disk (`log.stable`).
            if var own = progress[id] {
                if own.maybeUpdate(log.stable) {
                    progress[id] = own
                    if maybeCommit() { broadcastAppend() }
                }
            }
            if !waitingReads.isEmpty && log.term(log.committed) == term {
                let waiting = waitingReads
                waitingReads = []
                for context in waiting { startRead(context) }
            }
        }
    }

    private mutating func apply(_ change: MembershipChange) {
        switch change {
        case .add(let member):
            voters.insert(member)
            if role == .leader && progress[member] == nil {
                progress[member] = Progress(next: log.lastIndex + 1)
                progress[member]!.recentActive = true
                sendAppend(to: member)
            }
        case .remove(let member):
            voters.remove(member)
            progress[member] = nil
            readAcks[member] = nil
            if role == .leader && voters == [id] {
                // Alone now: reads waiting for a quorum of heartbeat answers are confirmed by this member alone.
                for read in pendingReads { readStates.append(ReadState(context: read.context, index: read.index)) }
                pendingReads = []
            }
            if member == id && role == .leader {
                becomeFollower(term: term, leader: 0)
            } else if role == .leader, maybeCommit() {
                // A smaller quorum may commit what was waiting.
                broadcastAppend()
            }
        }
    }

    // MARK: - Messages

    public mutating func step(_ m: Message) {
        if m.term > term {
            if m.kind == .vote || m.kind == .preVote {
                // Within a leader's lease a member does not help depose it (unless the leader asked for the
                // election).
                let inLease = configuration.checkQuorum && leader != 0 && electionElapsed < configuration.electionTicks
                if !m.transfer && inLease { return }
            }
            switch m.kind {
            case .preVote:
                break  // answered below without changing term
            case .preVoteResponse where !m.reject:
                break  // counted below; the term changes when the real election starts
            case .append, .heartbeat, .snapshot:
                becomeFollower(term: m.term, leader: m.from)
            default:
                becomeFollower(term: m.term, leader: 0)
            }
        } else if m.term < term {
            if (configuration.checkQuorum || configuration.preVote) && (m.kind == .append || m.kind == .heartbeat) {
                // A stale leader (partitioned away) learns the new term and steps down.
                send(Message(kind: .appendResponse, from: id, to: m.from, term: term))
            } else if m.kind == .preVote {
                var response = Message(kind: .preVoteResponse, from: id, to: m.from, term: term)
                response.reject = true
                send(response)
            }
            return
        }

        switch m.kind {
        case .vote, .preVote:
            let canVote = vote == m.from || (vote == 0 && leader == 0) || (m.kind == .preVote && m.term > term)
            var response = Message(kind: m.kind == .vote ? .voteResponse : .preVoteResponse, from: id, to: m.from,
                                   term: m.kind == .vote ? term : m.term)
            if canVote && log.isUpToDate(index: m.index, term: m.logTerm) {
                if m.kind == .vote {
                    electionElapsed = 0
                    vote = m.from
                }
            } else {
                response.reject = true
                response.term = term
            }
            send(response)
            return
        default:
            break
        }

        switch role {
        case .leader: stepLeader(m)
        case .candidate, .preCandidate: stepCandidate(m)
        case .follower: stepFollower(m)
        }
    }

    private mutating func stepFollower(_ m: Message) {
        switch m.kind {
        case .append:
            electionElapsed = 0
            leader = m.from
            handleAppend(m)
        case .heartbeat:
            electionElapsed = 0
            leader = m.from
            log.commit(to: min(m.commit, log.lastIndex))
            var response = Message(kind: .heartbeatResponse, from: id, to: m.from, term: term)
            response.context = m.context
            send(response)
        case .snapshot:
            electionElapsed = 0
            leader = m.from
            handleSnapshot(m)
        case .timeoutNow:
            if isPromotable { campaign(transfer: true) }
        default:
            break
        }
    }

    private mutating func stepCandidate(_ m: Message) {
        switch m.kind {
        case .append, .heartbeat, .snapshot:
            // A leader of this term exists.
            becomeFollower(term: m.term, leader: m.from)
            stepFollower(m)
        case .voteResponse where role == .candidate, .preVoteResponse where role == .preCandidate:
            votes[m.from] = !m.reject
            let granted = votes.filter { $0.value && voters.contains($0.key) }.count
            let rejected = votes.filter { !$0.value && voters.contains($0.key) }.count
            if granted >= quorum {
                if role == .preCandidate { campaignForReal(transfer: false) } else { becomeLeader() }
            } else if rejected >= quorum {
                becomeFollower(term: term, leader: 0)
            }
        default:
            break
        }
    }

    private mutating func stepLeader(_ m: Message) {
        guard var pr = progress[m.from] else { return }
        pr.recentActive = true
        switch m.kind {
        case .appendResponse:
            if m.reject {
                if pr.maybeDecrease(rejected: m.index, hint: log.findConflictByTerm(m.rejectHint, m.logTerm)) {
                    if pr.state == .replicate { pr.becomeProbe() }
                    progress[m.from] = pr
                    sendAppend(to: m.from)
                } else {
                    progress[m.from] = pr
                }
                return
            }
            let wasPaused = pr.isPaused(maxInflight: configuration.maxInflight)
            if pr.maybeUpdate(m.index) {
                switch pr.state {
                case .probe: pr.becomeReplicate()
                case .snapshot where pr.match >= pr.pendingSnapshot: pr.becomeProbe(); pr.becomeReplicate()
                case .replicate: pr.freeInflight(through: m.index)
                default: break
                }
                progress[m.from] = pr
                if maybeCommit() {
                    broadcastAppend()
                } else if wasPaused || pr.next <= log.lastIndex {
                    sendAppend(to: m.from)
                }
                if m.from == transferee && pr.match == log.lastIndex {
                    send(Message(kind: .timeoutNow, from: id, to: m.from, term: term))
                }
            } else {
                progress[m.from] = pr
            }
        case .heartbeatResponse:
            pr.probeSent = false
            switch pr.state {
            case .snapshot where pr.match < pr.pendingSnapshot:
                // The snapshot may have been lost: probe again (a new one goes out if it is still needed).
                pr.becomeProbe()
            case .replicate where pr.inflight.count >= configuration.maxInflight:
                // Appends may have been lost: let one more through.
                pr.inflight.removeFirst()
            default:
                break
            }
            progress[m.from] = pr
            if pr.match < log.lastIndex { sendAppend(to: m.from) }
            if m.context > 0 { acknowledgeRead(from: m.from, sequence: m.context) }
        default:
            progress[m.from] = pr
        }
    }

    private mutating func acknowledgeRead(from member: NodeID, sequence: UInt64) {
        readAcks[member] = max(readAcks[member] ?? 0, sequence)
        guard !pendingReads.isEmpty else { return }
        // The highest sequence a quorum has acknowledged releases every read up to it, in order.
        let acknowledged = voters.map { readAcks[$0] ?? 0 }.sorted(by: >)
        guard acknowledged.count >= quorum else { return }
        let confirmed = acknowledged[quorum - 1]
        while let read = pendingReads.first, read.sequence <= confirmed {
            pendingReads.removeFirst()
            readStates.append(ReadState(context: read.context, index: read.index))
        }
    }

    private mutating func handleAppend(_ m: Message) {
        var response = Message(kind: .appendResponse, from: id, to: m.from, term: term)
        if m.index < log.committed {
            response.index = log.committed
            send(response)
            return
        }
        if log.matchTerm(m.index, m.logTerm) {
            let lastNew = log.append(after: m.index, m.entries)
            log.commit(to: min(m.commit, lastNew))
            response.index = lastNew
        } else {
            // Where the logs could match: the last index at or below the rejected one, and its term, so the leader
            // can skip a whole term at a time.
            let hint = min(m.index, log.lastIndex)
            response.reject = true
            response.index = m.index
            response.rejectHint = hint
            response.logTerm = log.term(hint) ?? 0
        }
        send(response)
    }

    private mutating func handleSnapshot(_ m: Message) {
        guard let snapshot = m.snapshot else { return }
        var response = Message(kind: .appendResponse, from: id, to: m.from, term: term)
        if snapshot.index <= log.committed {
            response.index = log.committed
        } else if log.matchTerm(snapshot.index, snapshot.term) {
            // This log already has it: just commit, and report only what is known to match.
            log.commit(to: snapshot.index)
            response.index = log.committed
        } else {
            log.restore(snapshot)
            voters = snapshot.voters
            pendingMembershipIndex = 0
            response.index = snapshot.index
        }
        send(response)
    }

    // MARK: - Roles

    private mutating func resetElectionTimeout() {
        randomizedElectionTimeout = configuration.electionTicks
            + Int(random.next() % UInt64(configuration.electionTicks))
    }

    private mutating func reset(term newTerm: UInt64) {
        if term != newTerm {
            term = newTerm
            vote = 0
        }
        leader = 0
        electionElapsed = 0
        heartbeatElapsed = 0
        resetElectionTimeout()
        votes = [:]
        transferee = 0
        progress = [:]
        pendingReads = []
        waitingReads = []
        readAcks = [:]
    }

    private mutating func becomeFollower(term newTerm: UInt64, leader newLeader: NodeID) {
        reset(term: newTerm)
        role = .follower
        leader = newLeader
    }

    private mutating func campaign(transfer: Bool) {
        if configuration.preVote && !transfer {
            reset(term: term)
            role = .preCandidate
            requestVotes(kind: .preVote, term: term + 1, transfer: false)
        } else {
            campaignForReal(transfer: transfer)
        }
    }

    private mutating func campaignForReal(transfer: Bool) {
        reset(term: term + 1)
        role = .candidate
        vote = id
        requestVotes(kind: .vote, term: term, transfer: transfer)
    }

    private mutating func requestVotes(kind: MessageKind, term electionTerm: UInt64, transfer: Bool) {
        votes[id] = true
        if votes.filter(\.value).count >= quorum {
            // A single voter wins at once.
            if kind == .preVote { campaignForReal(transfer: transfer) } else { becomeLeader() }
            return
        }
        for member in voters.sorted() where member != id {
            var m = Message(kind: kind, from: id, to: member, term: electionTerm)
            m.index = log.lastIndex
            m.logTerm = log.lastTerm
            m.transfer = transfer
            send(m)
        }
    }

    private mutating func becomeLeader() {
        reset(term: term)
        role = .leader
        leader = id
        for member in voters { progress[member] = Progress(next: log.lastIndex + 1) }
        progress[id]!.match = log.stable
        // Any membership change in the log but not applied counts as pending.
        pendingMembershipIndex = log.lastIndex
        // An entry of this term: committing it commits everything before it, and confirms the commit index for
        // read index.
        log.append([Entry(term: term, index: log.lastIndex + 1, kind: .noop)])
        broadcastAppend()
    }

    // MARK: - Replication

    private mutating func send(_ m: Message) {
        messages.append(m)
    }

    private mutating func broadcastAppend() {
        for member in voters.sorted() where member != id { sendAppend(to: member) }
    }

    private mutating func broadcastHeartbeat(context: UInt64) {
        for member in voters.sorted() where member != id {
            guard let pr = progress[member] else { continue }
            var m = Message(kind: .heartbeat, from: id, to: member, term: term)
            // Never let a follower commit past what it is known to hold.
            m.commit = min(pr.match, log.committed)
            m.context = context
            send(m)
        }
    }

    private mutating func sendAppend(to member: NodeID) {
        guard var pr = progress[member], !pr.isPaused(maxInflight: configuration.maxInflight) else { return }
        let previous = pr.next - 1
        guard let previousTerm = log.term(previous),
              let entries = log.entries(from: pr.next, maxBytes: configuration.maxMessageBytes)
        else {
            // Compacted away: the follower needs the snapshot.
            var m = Message(kind: .snapshot, from: id, to: member, term: term)
            m.snapshot = log.snapshot
            pr.becomeSnapshot(log.snapshot.index)
            progress[member] = pr
            send(m)
            return
        }
        var m = Message(kind: .append, from: id, to: member, term: term)
        m.index = previous
        m.logTerm = previousTerm
        m.entries = entries
        m.commit = log.committed
        if let last = entries.last {
            switch pr.state {
            case .replicate:
                pr.next = last.index + 1
                pr.inflight.append(last.index)
            case .probe:
                pr.probeSent = true
            case .snapshot:
                break
            }
        } else if pr.state == .probe {
            pr.probeSent = true
        }
        progress[member] = pr
        send(m)
    }

    /// Commits the highest index a quorum holds, if it is of this term.
    private mutating func maybeCommit() -> Bool {
        let matches = voters.map { progress[$0]?.match ?? 0 }.sorted(by: >)
        guard matches.count >= quorum else { return false }
        let candidate = matches[quorum - 1]
        guard candidate > log.committed, log.term(candidate) == term else { return false }
        log.commit(to: candidate)
        return true
    }
}

/// A small, fast, seedable generator for election timeouts (deterministic runs).
struct SplitMix64: Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
