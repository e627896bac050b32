import CSupport
import Client
import PlacementDriver
import PlacementDriverClient
import Reactor
import Records
import Simulation

/// The invariants, checked while the run goes (sampled every few virtual milliseconds) and at its end.
final class Checks: @unchecked Sendable {
    private(set) var violations: [String] = []
    /// The leader seen for each term: two different ones break election safety.
    private var leaders: [UInt64: Int] = [:]
    /// A digest of the streams and ranges a member's state machine held at each applied index it was seen at.
    private var states: [UInt64: (member: Int, digest: UInt64)] = [:]
    /// Every committed Raft entry seen (index → term and a digest of its data): a committed entry never changes on
    /// any member (leader completeness: every later leader holds it; log matching over the committed prefix).
    private var committed: [UInt64: (term: UInt64, digest: UInt64)] = [:]
    /// Per member: the committed entries already looked at.
    private var checkedUpTo: [Int: UInt64] = [:]
    private(set) var committedEntriesChecked = 0
    /// Every sealed range seen, with its bounds: a sealed range never changes.
    private var sealed: [String: (start: UInt64, end: UInt64)] = [:]
    private(set) var sealedRangesSeen = 0
    /// Every range seen, with what never changes once it exists: its start and the epoch of the writer it was made
    /// for.
    private var created: [String: (start: UInt64, epoch: UInt64)] = [:]
    /// Every stream's final ranges, from the last member sampled at the highest applied index (for the history check).
    private var latestRanges: [UInt64: [RangeRecord]] = [:]
    private var latestStarts: [UInt64: UInt64] = [:]
    private var latestApplied: UInt64 = 0
    /// The server id each node registered with: a node keeps its id across restarts, and no two nodes share one.
    private var serverIDs: [Int: UInt64] = [:]
    var samples = 0

    func fail(_ message: String) {
        if violations.count < 50 { violations.append(message) }
    }

    /// Election safety and state machine safety, from what each live member shows now.
    func sample(_ nodes: [SimulatedNode]) {
        samples += 1
        for node in nodes {
            guard node.process.isAlive, let server = node.rangeServer, let reactor = node.process.reactor else { continue }
            reactor.shards[0].runSimulated {
                let id = server.serverID
                guard id != 0 else { return }
                if let known = serverIDs[node.index], known != id {
                    fail("registration: \(node.process.name) was server \(known) and is now server \(id)")
                }
                if let other = serverIDs.first(where: { $0.key != node.index && $0.value == id }) {
                    fail("registration: nodes \(other.key) and \(node.index) both are server \(id)")
                }
                serverIDs[node.index] = id
            }
        }
        for node in nodes {
            guard node.process.isAlive, let member = node.member, let reactor = node.process.reactor else { continue }
            reactor.shards[0].runSimulated {
                if member.isLeader {
                    if let other = leaders[member.term], other != node.index {
                        fail("election safety: members \(other) and \(node.index) both led term \(member.term)")
                    }
                    leaders[member.term] = node.index
                }
                checkModel(member.state, member: node.index, applied: member.appliedIndex)
                for stream in member.state.listStreams(after: 0, limit: Int.max) {
                    for range in (try? member.state.listRanges(stream: stream.streamID)) ?? [] where range.sealed {
                        let key = "\(stream.streamID)/\(range.index)"
                        if let seen = sealed[key] {
                            if seen.start != range.startOffset || seen.end != range.endOffset {
                                fail("sealed range \(key) was [\(seen.start), \(seen.end)) and is now [\(range.startOffset), \(range.endOffset)) on member \(node.index)")
                            }
                        } else {
                            sealed[key] = (range.startOffset, range.endOffset)
                            sealedRangesSeen += 1
                        }
                    }
                }
                // Committed entries: the same on every member that holds them, whoever leads later.
                let commit = member.commitIndex
                var index = max(checkedUpTo[node.index] ?? 0, 1)
                while index <= commit {
                    if let entry = member.raftEntry(at: index) {
                        var digest: UInt64 = 0xcbf2_9ce4_8422_2325
                        for byte in entry.data { digest = (digest ^ UInt64(byte)) &* 0x100_0000_01b3 }
                        if let seen = committed[index] {
                            if seen.term != entry.term || seen.digest != digest {
                                fail("committed Raft entry \(index) was term \(seen.term) and is term \(entry.term) on member \(node.index) (or its data differs)")
                            }
                        } else {
                            committed[index] = (entry.term, digest)
                            committedEntriesChecked += 1
                        }
                    }
                    index += 1
                }
                checkedUpTo[node.index] = commit + 1
                let applied = member.appliedIndex
                guard applied > 0 else { return }
                let digest = Checks.digest(member.state)
                if let seen = states[applied] {
                    if seen.digest != digest {
                        fail("state machine safety: members \(seen.member) and \(node.index) differ at applied index \(applied)")
                    }
                } else {
                    states[applied] = (node.index, digest)
                }
            }
        }
    }

    /// What the placement driver's state machine may hold, by the model of it: per stream, ranges numbered in order,
    /// each starting where the one before was sealed, only the last one open, epochs never falling and never above the
    /// stream's, each on distinct servers, as many as the stream's replicas or (when fewer are healthy) at least its ack
    /// count; a range's start and epoch never change.
    func checkModel(_ state: PDStateMachine, member: Int, applied: UInt64) {
        for stream in state.listStreams(after: 0, limit: Int.max) where !stream.deleted {
            let ranges = (try? state.listRanges(stream: stream.streamID)) ?? []
            for (i, range) in ranges.enumerated() {
                let key = "\(stream.streamID)/\(range.index)"
                if i > 0 {
                    let before = ranges[i - 1]
                    if range.index <= before.index || !before.sealed || range.startOffset != before.endOffset
                        || range.epoch < before.epoch
                    {
                        fail("model: stream \(stream.streamID) on member \(member): range \(before.index) "
                             + "[\(before.startOffset), \(before.endOffset)) sealed \(before.sealed) epoch \(before.epoch) "
                             + "is followed by range \(range.index) from \(range.startOffset) epoch \(range.epoch)")
                    }
                }
                if range.epoch > stream.epoch {
                    fail("model: range \(key) has epoch \(range.epoch), above its stream's \(stream.epoch) (member \(member))")
                }
                if range.sealed && range.endOffset < range.startOffset {
                    fail("model: range \(key) sealed at \(range.endOffset), below its start \(range.startOffset)")
                }
                let servers = Set(range.servers.map(\.serverID))
                // Fewer healthy servers than replicas, but at least the ack count: the range goes on all of them.
                if servers.count != range.servers.count || range.servers.count > Int(stream.replicaCount)
                    || range.servers.count < Int(stream.ackCount)
                {
                    fail("model: range \(key) is on servers \(range.servers.map(\.serverID)), for \(stream.replicaCount) replicas acknowledged by \(stream.ackCount)")
                }
                if let seen = created[key] {
                    if seen.start != range.startOffset || seen.epoch != range.epoch {
                        fail("model: range \(key) was made from \(seen.start) at epoch \(seen.epoch), and is now from \(range.startOffset) at epoch \(range.epoch) (member \(member))")
                    }
                } else {
                    created[key] = (range.startOffset, range.epoch)
                }
            }
            if applied >= latestApplied {
                latestRanges[stream.streamID] = ranges
                latestStarts[stream.streamID] = stream.startOffset
            }
        }
        if applied >= latestApplied { latestApplied = applied }
    }

    /// A digest of what the state machine says about streams and their ranges (sorted lists, so that two members
    /// with the same content agree whatever order their dictionaries hold it in).
    static func digest(_ state: PDStateMachine) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ value: UInt64) { hash = (hash ^ value) &* 0x100_0000_01b3 }
        for stream in state.listStreams(after: 0, limit: Int.max) {
            mix(stream.streamID)
            mix(stream.epoch)
            mix(stream.startOffset)
            mix(stream.deleted ? 1 : 0)
            for range in (try? state.listRanges(stream: stream.streamID)) ?? [] {
                mix(UInt64(range.index))
                mix(range.epoch)
                mix(range.startOffset)
                mix(range.endOffset)
                mix(range.sealed ? 1 : 0)
                for server in range.servers { mix(server.serverID) }
            }
        }
        return hash
    }

    /// The placement driver's epochs and stream ids against a model: each open takes the stream's next epoch, each
    /// create the next id. Linearizable means: no two calls got the same value, and a call that answered before
    /// another was made got the smaller value.
    func checkHistory(_ ledger: Ledger) {
        var byStream: [UInt64: [Ledger.OpenCall]] = [:]
        for call in ledger.opens { byStream[call.stream, default: []].append(call) }
        for (stream, calls) in byStream.sorted(by: { $0.key < $1.key }) {
            var seen: [UInt64: Int] = [:]
            for (i, call) in calls.enumerated() {
                if let j = seen[call.epoch] {
                    fail("linearizability: opens \(j) and \(i) of stream \(stream) both got epoch \(call.epoch)")
                }
                seen[call.epoch] = i
            }
            for a in calls {
                for b in calls where a.answered < b.invoked && a.epoch >= b.epoch {
                    fail("linearizability: stream \(stream) opened with epoch \(a.epoch), then later with \(b.epoch)")
                }
            }
        }
        // A fenced writer never gets an acknowledgement: once an open with a newer epoch has answered (it fenced the
        // older writer's range on a quorum of its replicas), an append the older writer makes after that must fail.
        for (stream, acknowledged) in ledger.acknowledged.sorted(by: { $0.key < $1.key }) {
            let opens = byStream[stream] ?? []
            var reported = false
            for ack in acknowledged where !reported {
                if let fence = opens.first(where: { $0.epoch > ack.epoch && $0.answered < ack.invoked }) {
                    fail("fencing: stream \(stream) acknowledged offset \(ack.offset) to a writer of epoch \(ack.epoch), "
                         + "appended at \(ack.invoked / 1_000_000) ms, after epoch \(fence.epoch) was opened at \(fence.answered / 1_000_000) ms")
                    reported = true
                }
            }
        }
        // Each acknowledged record lies in a range the placement driver made for the writer that was acknowledged:
        // the range holding its offset carries that writer's epoch (an append is acknowledged only by the replicas of
        // the range its writer opened).
        for (stream, acknowledged) in ledger.acknowledged.sorted(by: { $0.key < $1.key }) {
            guard let ranges = latestRanges[stream] else { continue }
            // Below the stream's start, trims removed the ranges.
            for ack in acknowledged where ack.offset >= latestStarts[stream] ?? 0 {
                guard let range = ranges.last(where: { $0.startOffset <= ack.offset }),
                      !range.sealed || ack.offset < range.endOffset
                else {
                    fail("history: stream \(stream) acknowledged offset \(ack.offset), which no range holds")
                    break
                }
                if range.epoch != ack.epoch {
                    fail("history: stream \(stream) acknowledged offset \(ack.offset) to a writer of epoch \(ack.epoch), in range \(range.index) of epoch \(range.epoch)")
                    break
                }
            }
        }
        for a in ledger.creates {
            for b in ledger.creates where a.answered < b.invoked && a.stream >= b.stream {
                fail("linearizability: stream \(a.stream) created before stream \(b.stream) was asked for")
            }
        }
        if Set(ledger.creates.map(\.stream)).count != ledger.creates.count {
            fail("linearizability: two creates got the same stream id")
        }
    }

    /// Every acknowledged record from the stream's start on is there, at its offset, byte for byte; no payload appears
    /// twice; nothing appears that no writer sent (AllAckedEntriesAreReadable, and exactly once). The start is where
    /// trims put it: at or past the highest trim the placement driver answered, never past the highest asked for.
    func checkStream(_ stream: UInt64, read: [ReadRecord], start: UInt64, ledger: Ledger) {
        let trimmed = ledger.trimmed[stream] ?? 0
        let asked = ledger.trimsAsked[stream] ?? 0
        if start < trimmed { fail("trim: stream \(stream) starts at \(start), below the trim to \(trimmed) it answered") }
        if start > asked { fail("trim: stream \(stream) starts at \(start), past every trim asked for (at most \(asked))") }
        if let first = read.first, first.offset != start {
            fail("stream \(stream) starts at \(start), but reading it from there gave offset \(first.offset) first")
        }
        var byOffset: [UInt64: [UInt8]] = [:]
        var payloads: Set<[UInt8]> = []
        var previous: UInt64?
        for record in read {
            if let previous, record.offset != previous + 1 {
                fail("stream \(stream): offsets jump from \(previous) to \(record.offset)")
            }
            previous = record.offset
            byOffset[record.offset] = record.record.value
            if !payloads.insert(record.record.value).inserted {
                fail("stream \(stream): payload \(Checks.name(record.record.value)) read twice (at \(record.offset))")
            }
        }
        let acknowledged = ledger.acknowledged[stream] ?? []
        var acknowledgedPayloads: Set<[UInt8]> = []
        var lost = 0
        for ack in acknowledged {
            acknowledgedPayloads.insert(ack.payload)
            guard ack.offset >= start else { continue }
            guard let value = byOffset[ack.offset] else {
                lost += 1
                if lost <= 3 {
                    fail("stream \(stream): acknowledged offset \(ack.offset) (\(Checks.name(ack.payload)), epoch \(ack.epoch)) is not readable")
                }
                continue
            }
            if value != ack.payload {
                fail("stream \(stream): offset \(ack.offset) holds \(Checks.name(value)), acknowledged as \(Checks.name(ack.payload)) (epoch \(ack.epoch))")
            }
        }
        if lost > 3 { fail("stream \(stream): \(lost) acknowledged records are not readable in all") }
        let unanswered = ledger.unanswered[stream] ?? []
        for (offset, value) in byOffset.sorted(by: { $0.key < $1.key })
        where !acknowledgedPayloads.contains(value) && !unanswered.contains(value) {
            // A payload another writer sent to its own stream cannot be here; nor can one nobody sent.
            fail("stream \(stream): offset \(offset) holds \(Checks.name(value)), which no append to this stream sent")
            break
        }
    }

    static func name(_ payload: [UInt8]) -> String {
        let end = payload.firstIndex(of: UInt8(ascii: "-"), after: 2) ?? payload.count
        return String(decoding: payload.prefix(min(end, 32)), as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    /// The index of the third "-" (the end of "writer-N-SEQ"), if any.
    func firstIndex(of byte: UInt8, after count: Int) -> Int? {
        var seen = 0
        for (i, b) in enumerated() where b == byte {
            seen += 1
            if seen > count { return i }
        }
        return nil
    }
}
