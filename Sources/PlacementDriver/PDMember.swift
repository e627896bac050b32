import Foundation
import Logging
import Platform
import Raft
import Reactor
import Wire

/// One placement driver member on a shard: the Raft core, its storage and the state machine, driven as reactor
/// tasks (a ticker and one processing task), never threads of their own. Proposals wait until their entry is applied
/// and answer with its result; reads go through read index, so they are linearizable. Shard-bound.
public final class PDMember {
    public struct Settings: Sendable {
        public var id: NodeID
        /// The initial voters of a new group (empty for a member joining a running group).
        public var initialVoters: Set<NodeID>
        public var directory: String
        public var tick: Duration
        public var raft: RaftConfiguration
        public var stateMachine: PDStateMachine.Settings
        /// Applied entries between two snapshots of the state machine (the log before a snapshot is dropped).
        public var snapshotEvery: UInt64
        /// Past this size (after a snapshot) the Raft log file is rewritten as one image.
        public var compactionBytes: Int

        public init(id: NodeID, initialVoters: Set<NodeID>, directory: String, tick: Duration = .milliseconds(50),
                    raft: RaftConfiguration = RaftConfiguration(), stateMachine: PDStateMachine.Settings = .init(),
                    snapshotEvery: UInt64 = 100_000, compactionBytes: Int = 64 << 20) {
            self.id = id
            self.initialVoters = initialVoters
            self.directory = directory
            self.tick = tick
            self.raft = raft
            self.stateMachine = stateMachine
            self.snapshotEvery = snapshotEvery
            self.compactionBytes = compactionBytes
        }
    }

    public let settings: Settings
    let context: ShardContext
    let logger: Logger
    private var node: RaftNode
    private let storage: RaftStorage
    public private(set) var state: PDStateMachine
    /// Sends a message to a peer (the transport); a message that cannot go is dropped (Raft retries).
    public var send: (Raft.Message) -> Void = { _ in }

    private var processing = false
    /// Whether the last log line said this member leads.
    private var leading = false
    private var again = false
    private var stopped = false
    private var proposals: [UInt64: (term: UInt64, continuation: UnsafeContinuation<Result<PDResult, PDError>, Never>)] = [:]
    private var reads: [UInt64: UnsafeContinuation<Result<UInt64, PDError>, Never>] = [:]
    private var readyReads: [(index: UInt64, continuation: UnsafeContinuation<Result<UInt64, PDError>, Never>)] = []
    private var nextReadContext: UInt64 = 0
    private var ticker: Task<Void, Error>?
    public private(set) var appliedIndex: UInt64 = 0

    private init(settings: Settings, context: ShardContext, node: RaftNode, storage: RaftStorage,
                 state: PDStateMachine) {
        self.settings = settings
        self.context = context
        self.node = node
        self.storage = storage
        self.state = state
        var logger = Logger(label: "elastic-stream.pd")
        logger[metadataKey: "member"] = "\(settings.id)"
        self.logger = logger
        appliedIndex = node.appliedIndex
    }

    /// Opens the member's storage in `settings.directory` (a new group bootstraps from `initialVoters`), restores the
    /// state machine from the last snapshot (entries after it are applied again as they are committed) and starts
    /// ticking.
    public static func start(_ settings: Settings, on context: ShardContext) async throws -> PDMember {
        let initial = settings.initialVoters.isEmpty
            ? PersistedState.joining : PersistedState.bootstrap(voters: settings.initialVoters)
        let storage = try await RaftStorage.open(directory: settings.directory, on: context, initial: initial,
                                                 compactionBytes: settings.compactionBytes)
        let persisted = storage.state
        let state = persisted.snapshot.data.isEmpty
            ? PDStateMachine(settings: settings.stateMachine)
            : try PDStateMachine(settings: settings.stateMachine, restoring: persisted.snapshot.data)
        let node = RaftNode(id: settings.id, configuration: settings.raft, restoring: persisted,
                            seed: context.random() ^ settings.id)
        let member = PDMember(settings: settings, context: context, node: node, storage: storage, state: state)
        member.startTicking()
        member.kick()
        return member
    }

    private func startTicking() {
        let member = ShardBound(self)
        let tick = settings.tick
        ticker = context.spawn {
            while !member.value.stopped {
                try await member.value.context.sleep(for: tick)
                if member.value.stopped { break }
                member.value.node.tick()
                member.value.kick()
            }
        }
    }

    public func stop() async {
        stopped = true
        ticker?.cancel()
        while processing { try? await context.sleep(for: .milliseconds(1)) }
        failWaiters(PDError(.shuttingDown, "the placement driver member is stopping"))
        await storage.close()
    }

    // MARK: - Status

    public var id: NodeID { settings.id }
    public var isLeader: Bool { node.role == .leader }
    public var leader: NodeID { node.leader }
    public var term: UInt64 { node.term }
    public var role: Role { node.role }
    public var voters: Set<NodeID> { node.voters }
    public var commitIndex: UInt64 { node.commitIndex }
    /// The entry of this member's Raft log at `index`, if the log still holds it (not compacted into a snapshot):
    /// for checks of the log from outside (the simulation's log matching and leader completeness).
    public func raftEntry(at index: UInt64) -> Entry? { node.entry(at: index) }
    public var raftLastIndex: UInt64 { node.lastIndex }
    public var storageSyncs: Int { storage.syncs }
    /// What is waiting on this member, for diagnosis.
    public var waiting: String {
        "proposals \(proposals.count) reads \(reads.count) processing \(processing) stopped \(stopped)"
    }

    // MARK: - Inputs

    /// A message from a peer.
    public func receive(_ message: Raft.Message) {
        guard !stopped else { return }
        node.step(message)
        kick()
    }

    /// Proposes `command`; returns what applying it answered. Refused at once on a member that does not lead
    /// (NOT_LEADER, naming the leader when known). If leadership changes before the entry commits, the answer is
    /// NOT_LEADER too: the command may or may not have been applied.
    public func propose(_ command: PDCommand) async throws(PDError) -> PDResult {
        guard !stopped else { throw PDError(.shuttingDown, "the placement driver member is stopping") }
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<PDResult, PDError>, Never>) in
            do throws(RaftError) {
                let index = try node.propose(command.encoded())
                // A slot left by an earlier term's proposal at the same index: that one was lost.
                proposals[index]?.continuation.resume(returning: .failure(PDError(.notLeader, "the proposal was overwritten by a new leader")))
                proposals[index] = (node.term, continuation)
                kick()
            } catch {
                continuation.resume(returning: .failure(Self.translate(error, leader: node.leader)))
            }
        }
        return try result.get()
    }

    /// Runs `body` on the state machine once it reflects every write acknowledged before this call (read index).
    public func read<T>(_ body: (PDStateMachine) throws(PDError) -> T) async throws(PDError) -> T {
        guard !stopped else { throw PDError(.shuttingDown, "the placement driver member is stopping") }
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<UInt64, PDError>, Never>) in
            nextReadContext += 1
            let context = nextReadContext
            do throws(RaftError) {
                try node.readIndex(context: context)
                reads[context] = continuation
                kick()
            } catch {
                continuation.resume(returning: .failure(Self.translate(error, leader: node.leader)))
            }
        }
        _ = try result.get()
        return try body(state)
    }

    static func translate(_ error: RaftError, leader: NodeID) -> PDError {
        switch error {
        case .notLeader(let leader):
            var failure = PDError(leader == 0 ? .noLeader : .notLeader,
                                  leader == 0 ? "no leader is known; retry shortly" : "member \(leader) leads")
            failure.leader = leader
            return failure
        case .transferring: return PDError(.noLeader, "leadership is being transferred; retry shortly")
        case .membershipChangePending, .invalidMembershipChange: return PDError(.invalidArgument, "\(error)")
        }
    }

    // MARK: - Processing

    /// Notices a lost leadership wherever it happened (a tick's quorum check, a message with a higher term, the
    /// processing loop): every proposal and read waiting on this member fails with NOT_LEADER.
    private func checkLeadership() {
        guard leading != (node.role == .leader) else { return }
        leading = node.role == .leader
        logger.info(leading ? "became the leader" : "no longer the leader",
                    metadata: ["term": "\(node.term)", "leader": "\(node.leader)"])
        if !leading {
            failWaiters(PDError(.notLeader, "leadership changed before the operation committed; it may or may not have been applied"))
        }
    }

    /// Starts the processing task, or asks the running one to go round again.
    private func kick() {
        checkLeadership()
        if processing {
            again = true
            return
        }
        guard node.hasReady else { return }
        processing = true
        let member = ShardBound(self)
        context.spawn { await member.value.process() }
    }

    private func process() async {
        defer { processing = false }
        repeat {
            again = false
            while node.hasReady && !stopped {
                let ready = node.ready()
                // A leader's appends may go out before its own copy is on disk (it counts itself only once it is):
                // the followers' writes then overlap the leader's. Votes and responses wait for the disk.
                for message in ready.messages where message.kind == .append || message.kind == .heartbeat {
                    send(message)
                }
                do {
                    try await storage.persist(ready)
                } catch {
                    storageFailed(error)
                    return
                }
                for message in ready.messages where message.kind != .append && message.kind != .heartbeat {
                    send(message)
                }
                if let snapshot = ready.snapshot, !snapshot.data.isEmpty {
                    do {
                        state = try PDStateMachine(settings: settings.stateMachine, restoring: snapshot.data)
                    } catch {
                        logger.critical("a snapshot from the leader does not decode", metadata: ["error": "\(error)"])
                    }
                    appliedIndex = snapshot.index
                }
                for entry in ready.committed { apply(entry) }
                for read in ready.readStates {
                    if let continuation = reads.removeValue(forKey: read.context) {
                        readyReads.append((read.index, continuation))
                    }
                }
                node.advance(ready)
                releaseReads()
                checkLeadership()
                await snapshotIfDue()
            }
        } while again && !stopped
    }

    private func apply(_ entry: Entry) {
        appliedIndex = entry.index
        var result = PDResult.done
        if entry.kind == .normal {
            if let command = PDCommand(entry.data) {
                result = state.apply(command, at: entry.index)
            } else {
                result = .failed(PDError(.badRequest, "entry \(entry.index) holds no command"))
            }
        }
        guard let waiter = proposals.removeValue(forKey: entry.index) else { return }
        if waiter.term == entry.term {
            waiter.continuation.resume(returning: .success(result))
        } else {
            // Another leader's entry took this index: the proposal was lost.
            waiter.continuation.resume(returning: .failure(PDError(.notLeader, "the proposal was overwritten by a new leader")))
        }
    }

    private func releaseReads() {
        readyReads.removeAll { read in
            guard read.index <= appliedIndex else { return false }
            read.continuation.resume(returning: .success(read.index))
            return true
        }
    }

    private func failWaiters(_ error: PDError) {
        let pending = proposals
        proposals = [:]
        for (_, waiter) in pending { waiter.continuation.resume(returning: .failure(error)) }
        let waitingReads = reads
        reads = [:]
        for (_, continuation) in waitingReads { continuation.resume(returning: .failure(error)) }
        let ready = readyReads
        readyReads = []
        for read in ready { read.continuation.resume(returning: .failure(error)) }
    }

    private func snapshotIfDue() async {
        guard appliedIndex >= node.snapshotIndex + settings.snapshotEvery,
              let entry = node.entry(at: appliedIndex), node.appliedIndex == appliedIndex
        else { return }
        let data: [UInt8]
        do {
            data = try state.snapshot()
        } catch {
            logger.error("snapshot failed; the log keeps growing", metadata: ["error": "\(error)"])
            return
        }
        let snapshot = Snapshot(index: appliedIndex, term: entry.term, voters: node.voters, data: data)
        do {
            try await storage.saveSnapshot(snapshot)
        } catch {
            // A write that failed part-way may have left records the next write would land beside.
            storageFailed(error)
            return
        }
        node.compact(through: snapshot.index, data: data)
    }

    /// Without its log on disk this member must not vote or acknowledge anything: it stops, and its process ends
    /// (its supervisor starts it again on what is durable).
    private func storageFailed(_ error: any Error) {
        logger.critical("Raft storage failed; the member stops", metadata: ["error": "\(error)"])
        stopped = true
        context.reportFatal("the placement driver member's Raft log could not be written: \(error)")
        failWaiters(PDError(.storageFailed, "the member's Raft log could not be written: \(error)"))
    }
}

@available(*, unavailable)
extension PDMember: Sendable {}
