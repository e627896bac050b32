/// A member of a Raft group. 0 means "none".
public typealias NodeID = UInt64

/// What a log entry carries.
public enum EntryKind: UInt8, Sendable, Hashable {
    /// A command for the state machine.
    case normal = 0
    /// A membership change (`MembershipChange`, encoded).
    case configuration = 1
    /// The empty entry a new leader appends to commit everything before it.
    case noop = 2
}

public struct Entry: Sendable, Hashable {
    public var term: UInt64
    public var index: UInt64
    public var kind: EntryKind
    public var data: [UInt8]

    public init(term: UInt64, index: UInt64, kind: EntryKind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }
}

/// What must be on disk before a vote or an acknowledgement counts.
public struct HardState: Sendable, Hashable {
    public var term: UInt64
    /// Who this member voted for in `term` (0: nobody).
    public var vote: NodeID
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: NodeID = 0, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }
}

/// One server added or removed at a time (the dissertation's single-server changes): any two majorities of the old
/// and the new configuration overlap, so no joint consensus is needed.
public enum MembershipChange: Sendable, Hashable {
    case add(NodeID)
    case remove(NodeID)

    public func encoded() -> [UInt8] {
        let (op, id): (UInt8, NodeID) = switch self {
        case .add(let id): (1, id)
        case .remove(let id): (2, id)
        }
        return [op] + withUnsafeBytes(of: id.littleEndian) { Array($0) }
    }

    public init?(_ bytes: [UInt8]) {
        guard bytes.count == 9 else { return nil }
        let id = bytes[1...].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        switch bytes[0] {
        case 1: self = .add(id)
        case 2: self = .remove(id)
        default: return nil
        }
    }
}

/// A state machine image standing for the log up to `index`.
public struct Snapshot: Sendable, Hashable {
    public var index: UInt64
    public var term: UInt64
    /// The voters as of `index`.
    public var voters: Set<NodeID>
    public var data: [UInt8]

    public init(index: UInt64, term: UInt64, voters: Set<NodeID>, data: [UInt8] = []) {
        self.index = index
        self.term = term
        self.voters = voters
        self.data = data
    }
}

public enum MessageKind: UInt8, Sendable, Hashable {
    case preVote, preVoteResponse, vote, voteResponse
    case append, appendResponse
    case heartbeat, heartbeatResponse
    case snapshot
    case timeoutNow
}

/// A message between members. Fields not used by a kind are zero.
///
/// - vote, preVote: `index`/`logTerm` are the candidate's last entry; `transfer` marks an election the leader asked
///   for (voters then ignore their leader lease).
/// - voteResponse, preVoteResponse: `reject`.
/// - append: `index`/`logTerm` name the entry before `entries`; `commit` is the leader's commit index.
/// - appendResponse: `index` is the follower's last matching index, or on `reject` the index that did not match,
///   with `rejectHint`/`logTerm` where the follower's log could match (its last index at or below, and that term).
/// - heartbeat: `commit` is at most what the follower is known to hold; `context` numbers a read-index round.
/// - heartbeatResponse: `context` echoed.
/// - snapshot: `snapshot`.
public struct Message: Sendable, Hashable {
    public var kind: MessageKind
    public var from: NodeID
    public var to: NodeID
    public var term: UInt64
    public var index: UInt64 = 0
    public var logTerm: UInt64 = 0
    public var entries: [Entry] = []
    public var commit: UInt64 = 0
    public var reject = false
    public var rejectHint: UInt64 = 0
    public var context: UInt64 = 0
    public var transfer = false
    public var snapshot: Snapshot?

    public init(kind: MessageKind, from: NodeID, to: NodeID, term: UInt64) {
        self.kind = kind
        self.from = from
        self.to = to
        self.term = term
    }
}

public enum Role: String, Sendable, Hashable {
    case follower, preCandidate, candidate, leader
}

/// A linearizable read may be served once the state machine has applied `index`.
public struct ReadState: Sendable, Hashable {
    public var context: UInt64
    public var index: UInt64
}

/// Everything the driver must do after a batch of inputs: persist `hardState`, `snapshot` and `entries` (entries
/// replace any persisted ones from the first one's index on), then send `messages`, then apply `committed` (and
/// restore `snapshot`) to the state machine, then call `advance`.
public struct Ready: Sendable {
    public var hardState: HardState?
    public var entries: [Entry] = []
    public var snapshot: Snapshot?
    public var committed: [Entry] = []
    public var messages: [Message] = []
    public var readStates: [ReadState] = []

    public var isEmpty: Bool {
        hardState == nil && entries.isEmpty && snapshot == nil && committed.isEmpty && messages.isEmpty
            && readStates.isEmpty
    }
}

/// Why a request to the core was refused.
public enum RaftError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Only the leader takes proposals and reads; `leader` is who this member believes leads (0: unknown).
    case notLeader(leader: NodeID)
    /// A leadership transfer is in progress: proposals wait until it ends.
    case transferring
    /// Another membership change is not applied yet: one at a time.
    case membershipChangePending
    case invalidMembershipChange(String)

    public var description: String {
        switch self {
        case .notLeader(let leader): return leader == 0 ? "not the leader; no leader known" : "not the leader; member \(leader) leads"
        case .transferring: return "leadership is being transferred"
        case .membershipChangePending: return "a membership change is still pending"
        case .invalidMembershipChange(let why): return "invalid membership change: \(why)"
        }
    }
}

/// Timing and limits of a member. Ticks are the driver's clock: the core has none.
public struct RaftConfiguration: Sendable {
    /// A follower that hears no leader for a random number of ticks in [electionTicks, 2 × electionTicks)
    /// campaigns; a leader checks its quorum once per electionTicks.
    public var electionTicks: Int
    public var heartbeatTicks: Int
    public var preVote: Bool
    public var checkQuorum: Bool
    /// Append messages in flight per follower (pipelining).
    public var maxInflight: Int
    /// Bytes of entries per append message (at least one entry).
    public var maxMessageBytes: Int

    public init(electionTicks: Int = 10, heartbeatTicks: Int = 1, preVote: Bool = true, checkQuorum: Bool = true,
                maxInflight: Int = 64, maxMessageBytes: Int = 1 << 20) {
        self.electionTicks = electionTicks
        self.heartbeatTicks = heartbeatTicks
        self.preVote = preVote
        self.checkQuorum = checkQuorum
        self.maxInflight = maxInflight
        self.maxMessageBytes = maxMessageBytes
    }
}

/// What a member restarts from: what it had persisted.
public struct PersistedState: Sendable {
    public var hardState: HardState
    public var snapshot: Snapshot
    /// Entries after the snapshot, contiguous.
    public var entries: [Entry]

    public init(hardState: HardState = HardState(), snapshot: Snapshot, entries: [Entry] = []) {
        self.hardState = hardState
        self.snapshot = snapshot
        self.entries = entries
    }

    /// A member of a new group. Every initial member bootstraps the same way: its log starts with one committed
    /// entry per initial voter (term 1, in id order) adding it, so that a member that joins later learns the whole
    /// configuration from the log alone.
    public static func bootstrap(voters: Set<NodeID>) -> PersistedState {
        let entries = voters.sorted().enumerated().map { offset, voter in
            Entry(term: 1, index: UInt64(offset + 1), kind: .configuration, data: MembershipChange.add(voter).encoded())
        }
        return PersistedState(hardState: HardState(term: 1, vote: 0, commit: UInt64(entries.count)),
                              snapshot: Snapshot(index: 0, term: 0, voters: voters), entries: entries)
    }

    /// A member about to be added to a running group: no log and no configuration until the leader sends them.
    public static var joining: PersistedState {
        PersistedState(snapshot: Snapshot(index: 0, term: 0, voters: []))
    }
}
