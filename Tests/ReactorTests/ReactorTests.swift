import CSupport
import Foundation
import Platform
import TestSupport
import Testing
@testable import Reactor

/// An actor whose every method runs on the shard given at creation: how per-shard state is meant to be held.
actor ShardLocalCounter {
    let shard: Shard
    var count = 0
    nonisolated var unownedExecutor: UnownedSerialExecutor { shard.asUnownedSerialExecutor() }
    init(shard: Shard) { self.shard = shard }
    func increment() -> Int? {
        count += 1
        return Reactor.currentShardIndex
    }
}

extension Serialized {
@Suite struct ReactorTests {
    @Test func workRunsOnTheIntendedShard() async throws {
        try await withReactor(.testing(shards: 2)) { reactor in
            for index in 0..<reactor.shardCount {
                let seen = try await reactor.run(on: index) { context -> [Int?] in
                    var seen: [Int?] = [Reactor.currentShardIndex]
                    try await context.nop()
                    seen.append(Reactor.currentShardIndex)
                    try await context.sleep(for: .milliseconds(1))
                    seen.append(Reactor.currentShardIndex)
                    async let child = Reactor.currentShardIndex
                    seen.append(await child)
                    let fromGroup = await withTaskGroup(of: Int?.self) { group in
                        for _ in 0..<4 { group.addTask { Reactor.currentShardIndex } }
                        return await group.reduce(into: [Int?]()) { $0.append($1) }
                    }
                    seen += fromGroup
                    let actor = ShardLocalCounter(shard: context.shard)
                    seen.append(await actor.increment())
                    seen.append(Reactor.currentShardIndex)
                    return seen
                }
                #expect(seen.count == 10)
                #expect(seen.allSatisfy { $0 == index }, "work of shard \(index) ran on \(seen)")
            }
            for index in 0..<reactor.shardCount {
                let spawned = try await reactor.run(on: index) { context -> Int? in
                    try await context.spawn {
                        await Task.yield()
                        return Reactor.currentShardIndex
                    }.value
                }
                #expect(spawned == index)
            }
        }
    }

    @Test func nothingTheReactorRunsLandsOnTheGlobalExecutor() async throws {
        cs_install_global_enqueue_watch()
        try await withReactor(.testing(shards: 2)) { reactor in
            // Counted on shard 0 before it answers: the answer itself resumes the test's task, which lives on the
            // global executor, and is not reactor work.
            let (leaked, leakedOnOther) = try await reactor.run(on: 0) { context -> (UInt64, UInt64) in
                let before = cs_global_enqueues_from_this_shard()
                // Shard 1's count, read on shard 1; the answer comes back over the channel, not the global executor.
                let otherBefore = try await reactor.submit(to: 1) { cs_global_enqueues_from_this_shard() }
                let shard = context.shard
                try await context.sleep(for: .microseconds(100))
                async let a: Void = ShardContext(shard: shard).nop()
                try await a
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<8 { group.addTask { try? await ShardContext(shard: shard).nop() } }
                }
                let value = try await reactor.submit(to: 1) { Reactor.currentShardIndex ?? -1 }
                precondition(value == 1)
                // A task on the other shard, awaited from this one: its answer travels the channel, not the global
                // executor.
                let other = reactor.shards[1]
                let fromOther = try await Task(executorPreference: other) {
                    try await ShardContext(shard: other).sleep(for: .microseconds(50))
                    return Reactor.currentShardIndex
                }.value
                precondition(fromOther == 1)
                let otherAfter = try await reactor.submit(to: 1) { cs_global_enqueues_from_this_shard() }
                return (cs_global_enqueues_from_this_shard() - before, otherAfter - otherBefore)
            }
            #expect(leaked == 0)
            #expect(leakedOnOther == 0)

            // The watch does see a leak: a detached task started on a shard goes to the global executor.
            let seen = try await reactor.run(on: 0) { _ -> UInt64 in
                let before = cs_global_enqueues_from_this_shard()
                Task.detached { _ = 1 }
                return cs_global_enqueues_from_this_shard() - before
            }
            #expect(seen == 1)
        }
    }

    @Test func crossShardMessagesArriveCompleteAndInOrder() async throws {
        let perPair = 1_000_000
        var configuration = ReactorConfiguration.testing(shards: 2)
        configuration.channelCapacity = 256  // small, so the overflow path is exercised too
        try await withReactor(configuration) { reactor in
            let receivers = [ShardCounter(), ShardCounter()]
            async let forward: Void = send(perPair, from: 0, to: 1, reactor, receivers[1])
            async let backward: Void = send(perPair, from: 1, to: 0, reactor, receivers[0])
            _ = try await (forward, backward)
            // Wait until both receivers have drained everything, then read their counters on their own shards.
            for (index, counter) in receivers.enumerated() {
                let deadline = Date().addingTimeInterval(20)
                var received = 0
                while received < perPair && Date() < deadline {
                    received = try await reactor.run(on: index) { context in
                        try await context.sleep(for: .milliseconds(1))
                        return counter.value
                    }
                }
                #expect(received == perPair)
                #expect(counter.outOfOrder == 0)
                #expect(counter.wrongThread == 0)
            }
        }
    }

    private func send(_ count: Int, from source: Int, to target: Int, _ reactor: Reactor, _ counter: ShardCounter)
        async throws
    {
        _ = try await reactor.run(on: source) { context in
            let destination = reactor.shards[target]
            for sequence in 0..<count {
                destination.post {
                    if Reactor.currentShardIndex != target { counter.wrongThread += 1 }
                    if counter.value != sequence { counter.outOfOrder += 1 }
                    counter.value += 1
                }
                if sequence % 4096 == 0 { await Task.yield() }
            }
            return 0
        }
    }

    @Test func submitRunsOnTheTargetAndWaitsWhenTheChannelIsFull() async throws {
        var configuration = ReactorConfiguration.testing(shards: 2)
        configuration.channelCapacity = 2
        try await withReactor(configuration) { reactor in
            let sum = try await reactor.run(on: 0) { _ in
                await withTaskGroup(of: Int.self) { group in
                    for i in 0..<2000 {
                        group.addTask {
                            (try? await reactor.submit(to: 1) { Reactor.currentShardIndex == 1 ? i : -1_000_000 }) ?? -1_000_000
                        }
                    }
                    return await group.reduce(0, +)
                }
            }
            #expect(sum == (0..<2000).reduce(0, +))
        }
    }

    /// Shard 1 is held busy while shard 0 fills the channel to it and keeps submitting: the submitters wait, and
    /// all of them finish once shard 1 catches up.
    @Test func submitWaitersResumeWhenTheTargetCatchesUp() async throws {
        var configuration = ReactorConfiguration.testing(shards: 2)
        configuration.channelCapacity = 4
        configuration.stallThreshold = nil
        try await withReactor(configuration) { reactor in
            try await reactor.submit(to: 1) { usleep(30_000) }  // warm-up: shard 1 is alive
            let sum = try await reactor.run(on: 0) { context -> Int in
                // Hold shard 1 for 50 ms from now on.
                reactor.shards[1].post { usleep(50_000) }
                return try await withThrowingTaskGroup(of: Int.self) { group in
                    for i in 0..<200 {
                        group.addTask { try await reactor.submit(to: 1) { i } }
                    }
                    return try await group.reduce(0, +)
                }
            }
            #expect(sum == (0..<200).reduce(0, +))
        }
    }

    /// Work that crosses shards when shutdown begins still completes: a shard does not exit while a peer may still
    /// send it a job.
    @Test func shutdownDrainsWorkInFlightBetweenShards() async throws {
        let reactor = try Reactor(configuration: .testing(shards: 2))
        let started = ShardCounter()
        let worker = Task {
            try await reactor.run(on: 0) { _ -> Int in
                var total = 0
                for i in 0..<20_000 {
                    total += try await reactor.submit(to: 1) { i & 1 }
                    if i == 100 { started.value = 1 }
                }
                return total
            }
        }
        while started.value == 0 { try await Task.sleep(for: .milliseconds(1)) }
        reactor.shutdown()
        #expect(try await worker.value == 10_000)
        #expect(reactor.shards.allSatisfy { $0.droppedAfterStop.load(ordering: .relaxed) == 0 })
        // After shutdown, new work is refused with a typed error instead of hanging.
        await #expect(throws: IOError.self) { _ = try await reactor.run(on: 0) { _ in 1 } }
        await #expect(throws: IOError.self) { _ = try await reactor.submit(to: 1) { 1 } }
    }

    /// Shard identity is the shard, not its index: a task on reactor A's shard 0 that runs work on reactor B's
    /// shard 0 really hops to B.
    @Test func twoReactorsInOneProcessKeepTheirShardsApart() async throws {
        try await withReactor(.testing(shards: 2)) { a in
            try await withReactor(.testing(shards: 2)) { b in
                let (onB, viaSubmit) = try await a.run(on: 0) { _ -> (Bool, Bool) in
                    let onB = try await b.run(on: 0) { _ in b.shards[0].isCurrent && !a.shards[0].isCurrent }
                    let viaSubmit = try await b.submit(to: 0) { b.shards[0].isCurrent }
                    return (onB, viaSubmit && a.shards[0].isCurrent)
                }
                #expect(onB)
                #expect(viaSubmit)
            }
        }
    }

    @Test func timersFireNoEarlierThanAskedAndWithinABound() async throws {
        try await withReactor { reactor in
            for milliseconds in [1, 5, 20] {
                let elapsed = try await reactor.run(on: 0) { context -> Duration in
                    let start = context.now
                    try await context.sleep(for: .milliseconds(milliseconds))
                    return context.now - start
                }
                #expect(elapsed >= .milliseconds(milliseconds))
                // Generous: a shared two-core VM can be slow to schedule the thread.
                #expect(elapsed < .milliseconds(milliseconds + 50), "slept \(elapsed) for \(milliseconds) ms")
            }
            let deadlineMet = try await reactor.run(on: 1) { context -> Bool in
                let deadline = context.now + .milliseconds(3)
                try await context.sleep(until: deadline)
                return context.now >= deadline
            }
            #expect(deadlineMet)
        }
    }

    @Test func cancellingASleepEndsItEarlyWithACancelledError() async throws {
        try await withReactor { reactor in
            let (kind, elapsed) = try await reactor.run(on: 0) { context -> (IOError.Kind?, Duration) in
                let start = context.now
                let shard = context.shard
                let sleeper = Task(executorPreference: shard) { () async throws -> Void in
                    try await ShardContext(shard: shard).sleep(for: .seconds(10))
                }
                try await context.sleep(for: .milliseconds(5))
                sleeper.cancel()
                let result = await sleeper.result
                if case .failure(let error) = result { return ((error as? IOError)?.kind, context.now - start) }
                return (nil, context.now - start)
            }
            #expect(kind?.isCancelled == true)
            #expect(elapsed < .seconds(2))
        }
    }

    @Test func aDeadlineCancelsSlowWork() async throws {
        try await withReactor { reactor in
            let outcome = try await reactor.run(on: 0) { context -> String in
                let shard = context.shard
                do {
                    _ = try await context.withTimeout(.milliseconds(10)) {
                        try await ShardContext(shard: shard).sleep(for: .seconds(5))
                        return 1
                    }
                    return "finished"
                } catch let error as IOError {
                    return error.kind.isTimedOut ? "timed out" : "other: \(error)"
                }
            }
            #expect(outcome == "timed out")
            let fast = try await reactor.run(on: 0) { context in
                try await context.withTimeout(.seconds(5)) { 42 }
            }
            #expect(fast == 42)
        }
    }

    @Test func stallsAreDetectedAndOnlyThen() async throws {
        var configuration = ReactorConfiguration.testing(shards: 1)
        configuration.stallThreshold = .milliseconds(10)
        try await withReactor(configuration) { reactor in
            _ = try await reactor.run(on: 0) { context in
                for _ in 0..<20 { try await context.sleep(for: .milliseconds(2)) }
                return 0
            }
            #expect(reactor.stallsReported == 0)
            _ = try await reactor.run(on: 0) { _ in
                usleep(80_000)  // holds the shard: a stall
                return 0
            }
            #expect(reactor.stallsReported >= 1)
        }
    }

    @Test func ringReportsItsGrantedFlags() async throws {
        try await withReactor(.testing(shards: 1)) { reactor in
            let flags = RingFlags(rawValue: try await reactor.run(on: 0) { context in context.ringFlags.rawValue })
            // Linux 6.1 and later grant SINGLE_ISSUER|DEFER_TASKRUN; an older kernel gets a fallback, reported as such.
            var name = utsname()
            uname(&name)
            let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
            if parts.count == 2, (parts[0], parts[1]) >= (6, 1) {
                #expect(flags == [.singleIssuer, .deferTaskrun], "kernel \(release) granted \(flags)")
                #expect(flags.description == "SINGLE_ISSUER|DEFER_TASKRUN")
            } else {
                #expect(!flags.contains(.deferTaskrun) || flags.contains(.singleIssuer))
            }
        }
    }

    @Test func shutdownLeavesNoThreadAndNoOpenDescriptor() async throws {
        let descriptorsBefore = cs_open_fd_count()
        let threadsBefore = threadCount()
        try await withTemporaryDirectory { directory in
            let reactor = try Reactor(configuration: .testing(shards: 2))
            #expect(threadCount() >= threadsBefore + 2)
            _ = try await reactor.run(on: 1) { context in
                let file = try await context.open("\(directory)/f", options: FileOpenOptions(create: true))
                try await file.allocate(at: 0, length: 4096)
                try await file.close()
                let listener = try context.listen(host: "127.0.0.1", port: 0)
                try await listener.close()
                try await context.sleep(for: .milliseconds(1))
                return 0
            }
            reactor.shutdown()
            reactor.shutdown()  // twice is harmless
        }
        #expect(cs_open_fd_count() == descriptorsBefore)
        #expect(threadCount() == threadsBefore)
    }

    @Test func shutdownCancelsRequestsThatWouldNeverFinish() async throws {
        var configuration = ReactorConfiguration.testing(shards: 1)
        configuration.drainTimeout = .milliseconds(50)
        let reactor = try Reactor(configuration: configuration)
        let sleeper = Task {
            try await reactor.run(on: 0) { context in
                try await context.sleep(for: .seconds(60))
                return 0
            }
        }
        try await Task.sleep(for: .milliseconds(20))
        let start = ContinuousClock.now
        reactor.shutdown()
        #expect(ContinuousClock.now - start < .seconds(5))
        let result = await sleeper.result
        #expect(throws: IOError.self) { try result.get() }
    }

    @Test func badConfigurationIsRefused() {
        var configuration = ReactorConfiguration.testing()
        configuration.channelCapacity = 3
        #expect(throws: ReactorError.self) { _ = try Reactor(configuration: configuration) }
        configuration = .testing()
        configuration.cpus = []
        #expect(throws: ReactorError.self) { _ = try Reactor(configuration: configuration) }
        configuration = .testing()
        configuration.cpus = [100_000]
        configuration.pinThreads = true
        #expect(throws: ReactorError.cpuNotAllowed(100_000)) { _ = try Reactor(configuration: configuration) }
    }
}
}
