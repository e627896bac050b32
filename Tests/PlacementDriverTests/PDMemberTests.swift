import Foundation
import PlacementDriver
import Platform
import Raft
import Reactor
import SwiftProtobuf
import TestSupport
import Testing
import Wire


/// Carries a shard-bound member into closures that run on its shard.
struct MemberBox: @unchecked Sendable {
    let member: PDMember

    func waitForLeadership() async throws {
        for _ in 0..<6000 where !member.isLeader { try await Task.sleep(for: .milliseconds(5)) }
        try #require(member.isLeader, "the single member did not become leader")
    }

    func run(_ operation: OperationCode, _ request: some SwiftProtobuf.Message) async throws -> PDResult {
        try await member.propose(try PDCommand(operation, now: Int64(Date().timeIntervalSince1970 * 1000), request: request))
    }

    func createStream() async throws -> UInt64 {
        var request = Elasticstream_V1_CreateStreamRequest()
        request.stream.replicaCount = 1
        request.stream.ackCount = 1
        guard case .stream(let stream, _) = try await run(.createStream, request) else { throw PDError(.unknown, "create") }
        return stream.streamID
    }
}

func settings(_ directory: String, snapshotEvery: UInt64 = 10_000, compactionBytes: Int = 64 << 20)
    -> PDMember.Settings
{
    PDMember.Settings(id: 1, initialVoters: [1], directory: directory, tick: .milliseconds(5),
                      raft: RaftConfiguration(electionTicks: 4, heartbeatTicks: 1), snapshotEvery: snapshotEvery,
                      compactionBytes: compactionBytes)
}

/// The state of a member started again on `settings`' directory, once its replayed log is applied (the new term's
/// first entry commits after it).
func restartedState(_ reactor: Reactor, _ settings: PDMember.Settings) async throws -> [UInt8] {
    try await reactor.run(on: 0) { context -> [UInt8] in
        let box = MemberBox(member: try await PDMember.start(settings, on: context))
        try await box.waitForLeadership()
        _ = try await box.member.read { $0.streams.count }
        let snapshot = try box.member.state.snapshot()
        await box.member.stop()
        return snapshot
    }
}

/// How many streams a member started again on `settings`' directory holds, once it leads.
func restartedStreamCount(_ reactor: Reactor, _ settings: PDMember.Settings) async throws -> Int {
    try await reactor.run(on: 0) { context -> Int in
        let box = MemberBox(member: try await PDMember.start(settings, on: context))
        try await box.waitForLeadership()
        let count = try await box.member.read { $0.streams.count }
        await box.member.stop()
        return count
    }
}

@Suite(.serialized) struct PDMemberTests {
    /// A single-member group on the reactor: it elects itself, applies proposals durably, batches concurrent
    /// proposals into shared syncs, serves linearizable reads, and after a restart (its Raft log replayed from disk)
    /// holds exactly the same state.
    @Test func aSingleMemberServesAndRecoversItsStateAfterARestart() async throws {
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let (before, syncs, streams) = try await reactor.run(on: 0) { context -> ([UInt8], Int, Int) in
                let box = MemberBox(member: try await PDMember.start(settings(directory), on: context))
                try await box.waitForLeadership()
                let syncsBefore = box.member.storageSyncs
                let ids = try await withThrowingTaskGroup(of: UInt64.self) { group in
                    for _ in 0..<64 { group.addTask { try await box.createStream() } }
                    return try await group.reduce(into: [UInt64]()) { $0.append($1) }
                }
                let syncs = box.member.storageSyncs - syncsBefore
                #expect(Set(ids).count == 64, "every create got its own stream id")
                let count = try await box.member.read { $0.streams.count }
                let snapshot = try box.member.state.snapshot()
                await box.member.stop()
                return (snapshot, syncs, count)
            }
            #expect(streams == 64)
            #expect(syncs < 64, "64 concurrent proposals took \(syncs) syncs: no batching")

            let after = try await restartedState(reactor, settings(directory))
            #expect(after == before, "the state after the restart differs")
        }
    }

    /// With snapshots every 20 entries the log is compacted and the file rewritten; a restart restores the state from
    /// the snapshot plus the entries after it.
    @Test func snapshotsCompactTheLogAndRestoreTheState() async throws {
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let configured = settings(directory, snapshotEvery: 20, compactionBytes: 16 << 10)
            let uncompacted = try await withTemporaryDirectory { other -> Int in
                try await reactor.run(on: 0) { context -> Int in
                    let box = MemberBox(member: try await PDMember.start(settings(other), on: context))
                    try await box.waitForLeadership()
                    for _ in 0..<600 { _ = try await box.createStream() }
                    await box.member.stop()
                    return try FileManager.default.attributesOfItem(atPath: "\(other)/raft.log")[.size] as! Int
                }
            }
            let before = try await reactor.run(on: 0) { context -> [UInt8] in
                let box = MemberBox(member: try await PDMember.start(configured, on: context))
                try await box.waitForLeadership()
                for _ in 0..<600 { _ = try await box.createStream() }
                let snapshot = try box.member.state.snapshot()
                await box.member.stop()
                return snapshot
            }
            let after = try await restartedState(reactor, configured)
            #expect(after == before)
            let size = try FileManager.default.attributesOfItem(atPath: "\(directory)/raft.log")[.size] as! Int
            #expect(size < uncompacted, "the log file (\(size) bytes) was not rewritten smaller than \(uncompacted)")
        }
    }

    /// A torn last write (garbage after the valid records) is cut off at restart; everything before it stays.
    @Test func aTornTailOfTheRaftLogIsCutOff() async throws {
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let written = try await reactor.run(on: 0) { context -> Int in
                let box = MemberBox(member: try await PDMember.start(settings(directory), on: context))
                try await box.waitForLeadership()
                for _ in 0..<10 { _ = try await box.createStream() }
                await box.member.stop()
                return 10
            }
            let path = "\(directory)/raft.log"
            let valid = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try handle.seekToEnd()
            try handle.write(contentsOf: Data([0x40, 0, 0, 0] + [UInt8](repeating: 0xAB, count: 30)))
            try handle.close()
            let streams = try await restartedStreamCount(reactor, settings(directory))
            #expect(streams == written)
            let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
            #expect(size > valid, "new records follow the cut")
            let reread = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(!reread[valid..<min(valid + 34, reread.count)].elementsEqual([0x40, 0, 0, 0] + [UInt8](repeating: 0xAB, count: 30)))
        }
    }

    /// Damage is told from a torn tail by the write marks: a record that fails its checks inside the last write is
    /// a torn tail (cut, the member starts without that write); one in an earlier write, followed by the mark of a
    /// write that began after it, had been synced: the member refuses to start, naming the file and position, rather
    /// than come back without entries it acknowledged.
    @Test func damageBeforeTheLastWriteStopsTheMemberButATornLastWriteIsCut() async throws {
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            try await reactor.run(on: 0) { context in
                let box = MemberBox(member: try await PDMember.start(settings(directory), on: context))
                try await box.waitForLeadership()
                for _ in 0..<10 { _ = try await box.createStream() }
                await box.member.stop()
            }
            let path = "\(directory)/raft.log"
            let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            // The last record is the last write's mark: its last 8 bytes say where that write began.
            let lastWrite = Int(original[(original.count - 8)...].withUnsafeBytes {
                UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))
            })
            #expect(lastWrite > 0 && lastWrite < original.count - 45)

            // A byte of the last write's first record: a torn tail. The member starts, without that write.
            var torn = original
            torn[lastWrite + 20] ^= 0x5A
            try Data(torn).write(to: URL(fileURLWithPath: path))
            let streams = try await restartedStreamCount(reactor, settings(directory))
            #expect(streams >= 9 && streams <= 10)

            // A byte of a record in an earlier write: corruption, and no start.
            var damaged = original
            damaged[lastWrite / 2] ^= 0x5A
            try Data(damaged).write(to: URL(fileURLWithPath: path))
            let refusal = try await reactor.run(on: 0) { context -> String in
                do {
                    let member = try await PDMember.start(settings(directory), on: context)
                    await member.stop()
                    return "started"
                } catch {
                    return "\(error)"
                }
            }
            #expect(refusal.contains("Raft log corruption in \(path)"), "\(refusal)")
        }
    }

    /// The file's image (its first write, put in place by a rename) is never torn: damage in it, with nothing written
    /// after it, is corruption, not a tail to cut (cutting it would leave a member with no term, vote or entries).
    @Test func damageInsideTheImageIsCorruption() async throws {
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            try await reactor.run(on: 0) { context in
                let storage = try await RaftStorage.open(directory: directory, on: context,
                                                         initial: .bootstrap(voters: [1, 2, 3]))
                await storage.close()
            }
            let path = "\(directory)/raft.log"
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            bytes[bytes.count / 2] ^= 0x5A
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let refusal = try await reactor.run(on: 0) { context -> String in
                do {
                    let storage = try await RaftStorage.open(directory: directory, on: context,
                                                             initial: .bootstrap(voters: [1, 2, 3]))
                    await storage.close()
                    return "opened"
                } catch {
                    return "\(error)"
                }
            }
            #expect(refusal.contains("Raft log corruption") && refusal.contains("image"), "\(refusal)")
        }
    }

    /// Entries an older build let into the log (an OPEN_STREAM whose epoch would overflow, a registration whose id
    /// would) are proposed here straight to the member, past the server's checks. Applying them answers an error;
    /// the member keeps serving, and a restart that replays them comes up with the same state.
    @Test func aCommittedEntryThatWouldOverflowNeverStopsTheMember() async throws {
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 1))
            defer { reactor.shutdown() }
            let (before, answers) = try await reactor.run(on: 0) { context -> ([UInt8], [ErrorCode]) in
                let box = MemberBox(member: try await PDMember.start(settings(directory), on: context))
                try await box.waitForLeadership()
                let stream = try await box.createStream()
                var answers: [ErrorCode] = []
                for epoch in [UInt64.max, UInt64.max - 1] {
                    var open = Elasticstream_V1_OpenStreamRequest()
                    open.streamID = stream
                    open.epoch = epoch
                    answers.append(code(try await box.run(.openStream, open)))
                }
                var register = Elasticstream_V1_RegisterRangeServerRequest()
                register.server.serverID = UInt64.max
                register.server.shardAddresses = ["127.0.0.1:1"]
                answers.append(code(try await box.run(.registerRangeServer, register)))
                // Still serving.
                _ = try await box.createStream()
                let snapshot = try box.member.state.snapshot()
                await box.member.stop()
                return (snapshot, answers)
            }
            #expect(answers == [.invalidArgument, .invalidArgument, .invalidArgument])
            let after = try await restartedState(reactor, settings(directory))
            #expect(after == before, "the replayed log gave a different state")
        }
    }
}
