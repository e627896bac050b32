import CSupport
import Logging
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// The shard's thread: start-up, the loop, sleeping, and stopping.
extension Shard {
    func run() {
        cs_set_current_shard(Int32(index), identity)
        defer { cs_set_current_shard(-1, nil) }
        if configuration.pinThreads {
            let rc = cs_pin_current_thread(Int32(cpu))
            if rc < 0 { return fail(IOError(.pin, .system(errno: -rc), target: "cpu \(cpu)")) }
        }
        var granted: UInt32 = 0
        var error: Int32 = 0
        guard let ring = cs_ring_create(configuration.ringEntries, configuration.ringEntries * 4, &granted, &error)
        else { return fail(IOError(.ringSetup, .system(errno: -error), target: "shard \(index)")) }
        self.ring = ring
        grantedRingFlags = granted
        do {
            bufferPool = try BufferPool(shard: self)
        } catch {
            cs_ring_destroy(ring)
            self.ring = nil
            return fail(error)
        }
        lifecycle.store(1, ordering: .releasing)
        logger.debug("shard started", metadata: ["cpu": "\(cpu)", "ring_flags": "\(granted)"])

        loop()

        // Close the foreign inbox first: from here on, whatever arrives is counted as dropped, never lost silently.
        let late = foreignInbox.withLock { inbox -> Int in
            inbox.closed = true
            defer { inbox.messages.removeAll() }
            return inbox.messages.count
        }
        if late > 0 { droppedAfterStop.add(late, ordering: .relaxed) }
        if completions.inFlight == 0 {
            bufferPool?.retire()
            bufferPool = nil
            cs_ring_destroy(ring)
        } else {
            // The kernel may still write into the pool's memory or the requests' buffers: leaking the ring and the
            // pool is the only safe choice.
            logger.error("shard stopped with requests in flight; leaking its ring and buffer pool",
                         metadata: ["in_flight": "\(completions.inFlight)"])
        }
        self.ring = nil
        lifecycle.store(3, ordering: .releasing)
    }

    private func fail(_ error: IOError) {
        startError = error
        lifecycle.store(2, ordering: .releasing)
    }

    private func loop() {
        let pollNanoseconds = configuration.pollDuration.wholeNanoseconds
        var idleSince: UInt64 = 0
        var idleSpins = 0
        var stop = StopState()
        while true {
            var worked = false
            if !stop.idleMarked { worked = drainChannels() }
            if !runQueue.isEmpty || !localCalls.isEmpty {
                runLocal()
                worked = true
            }
            if overflowCount > 0 || channelWaiterCount > 0 {
                if flushOutbound() > 0 { worked = true }
            }
            if completions.inFlight > 0 || cs_ring_sq_ready(ring) > 0 {
                if pollRing() > 0 { worked = true }
            }
            if wakePendingCount > 0 { wakeMarked() }
            if worked {
                idleSince = 0
                idleSpins = 0
                continue
            }
            if stopRequested.load(ordering: .relaxed) {
                if stopStep(&stop) { return }
                continue
            }
            // Spinning would keep the kernel's io-wq worker, which shares this CPU, from finishing an offloaded
            // request (an fdatasync): then sleep in the ring at once. Otherwise poll, reading the clock only every
            // 64 idle turns.
            if completions.offloadedInFlight == 0 {
                idleSpins &+= 1
                if idleSpins & 63 != 0 { continue }
                let now = cs_monotonic_ns()
                if idleSince == 0 { idleSince = now }
                if now &- idleSince < pollNanoseconds {
                    cs_cpu_relax()
                    continue
                }
            }
            // With messages waiting for room in a peer's channel, sleep only briefly: the peer drains without
            // waking us.
            sleep(timeoutNanoseconds: overflowCount > 0 || channelWaiterCount > 0 ? 100_000 : -1)
            idleSince = 0
            idleSpins = 0
        }
    }

    /// Where a stopping shard is in its shutdown.
    private struct StopState {
        var started = false
        var deadline: UInt64 = 0
        /// Past this, the shard stops waiting for the reactor to drain, whatever is still going on.
        var hardDeadline: UInt64 = 0
        var cancelledAll = false
        /// Marked idle for the quiescence check: takes no message until it marks itself busy again.
        var idleMarked = false
    }

    /// One idle turn of a stopping shard. Returns true when the shard may exit: the whole reactor is quiescent, or
    /// this shard gave up waiting.
    private func stopStep(_ stop: inout StopState) -> Bool {
        let now = cs_monotonic_ns()
        if !stop.started {
            stop.started = true
            acceptingWork = false
            stop.deadline = now &+ configuration.drainTimeout.wholeNanoseconds
            stop.hardDeadline = now &+ 10 &* max(configuration.drainTimeout.wholeNanoseconds, 100_000_000)
        }
        if fabric.quiesced.load(ordering: .sequentiallyConsistent) { return true }
        let locallyIdle = runQueue.isEmpty && localCalls.isEmpty && overflowCount == 0 && channelWaiterCount == 0
            && completions.inFlight == 0
        if stop.idleMarked {
            if hasPendingInbound() || !locallyIdle {
                // Busy again: say so (and bump the activity count) before taking any message.
                idle.store(false, ordering: .sequentiallyConsistent)
                fabric.activity.add(1, ordering: .sequentiallyConsistent)
                stop.idleMarked = false
                return false
            }
            if fabric.isQuiescent() {
                fabric.quiesced.store(true, ordering: .sequentiallyConsistent)
                for peer in 0..<fabric.shardCount where peer != index { fabric.withShard(peer) { $0.wake() } }
                return true
            }
        } else if locallyIdle && !hasPendingInbound() {
            idle.store(true, ordering: .sequentiallyConsistent)
            stop.idleMarked = true
            return false
        }
        // In-flight I/O that outlives the drain timeout (a receive on an idle socket, a long sleep) is cancelled.
        // Work still moving between shards is not cut short; only a reactor that has not drained by the hard
        // deadline (ten drain timeouts) is abandoned, loudly.
        if now >= stop.deadline && !stop.cancelledAll && completions.inFlight > 0 {
            stop.cancelledAll = true
            cancelAllInFlight()
        }
        if now >= stop.hardDeadline {
            logger.error("shard gave up waiting for the reactor to drain",
                         metadata: ["in_flight": "\(completions.inFlight)", "queued": "\(runQueue.count)"])
            fabric.quiesced.store(true, ordering: .sequentiallyConsistent)
            return true
        }
        sleep(timeoutNanoseconds: 1_000_000)
        return false
    }

    /// Runs queued local jobs and calls, at most one batch of each.
    private func runLocal() {
        if !localCalls.isEmpty {
            let calls = localCalls
            localCalls.removeAll(keepingCapacity: true)
            for call in calls { call() }
        }
        var budget = configuration.jobBatch
        let serial = asUnownedSerialExecutor()
        let task = asUnownedTaskExecutor()
        while budget > 0, let job = runQueue.pop() {
            budget -= 1
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
            job.runSynchronously(isolatedTo: serial, taskExecutor: task)
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
        }
    }

    @inline(__always)
    private func handle(_ message: consuming ShardMessage) {
        switch message {
        case .job(let job):
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
            job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
            progressCount &+= 1
            progress.store(progressCount, ordering: .relaxed)
        case .call(let body):
            body()
        }
    }

    private func drainChannels() -> Bool {
        var any = false
        let batch = configuration.channelDrainBatch
        for source in 0..<fabric.shardCount where source != index {
            let drained = fabric.withChannel(from: source, to: index) { $0.drain(limit: batch) { handle($0) } }
            if drained > 0 { any = true }
        }
        if foreignPending.load(ordering: .relaxed) {
            foreignPending.store(false, ordering: .sequentiallyConsistent)
            let messages = foreignInbox.withLock { inbox in
                defer { inbox.messages.removeAll(keepingCapacity: true) }
                return inbox.messages
            }
            for message in messages { handle(message) }
            any = any || !messages.isEmpty
        }
        return any
    }

    /// Moves overflow messages into channels that have room, and resumes tasks waiting for room. Returns how many
    /// messages moved plus how many tasks resumed.
    private func flushOutbound() -> Int {
        var moved = 0
        for target in 0..<overflow.count {
            if !overflow[target].isEmpty {
                var sent = 0
                fabric.withChannel(from: index, to: target) { channel in
                    for message in overflow[target] {
                        if !channel.push(message) { break }
                        sent += 1
                    }
                }
                if sent > 0 {
                    moved += sent
                    overflow[target].removeFirst(sent)
                    overflowCount -= sent
                    markForWake(target)
                }
            }
            if !channelWaiters[target].isEmpty && channelHasRoom(to: target) {
                let waiters = channelWaiters[target]
                channelWaiters[target].removeAll()
                channelWaiterCount -= waiters.count
                moved += waiters.count
                // Each waiter re-checks for room when it runs, and waits again if others took it first.
                for waiter in waiters { waiter.resume() }
            }
        }
        return moved
    }

    /// Submits what is prepared and reaps what completed. Returns the number of completions handled.
    private func pollRing() -> Int {
        let rc = cs_ring_submit_and_get_events(ring)
        if rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
            logger.error("io_uring submit failed", metadata: ["errno": "\(-rc)"])
        }
        return reap()
    }

    private func reap() -> Int {
        var total = 0
        while true {
            let n = Int(cs_ring_reap(ring, cqes, UInt32(cqeBatch)))
            for i in 0..<n {
                let cqe = cqes[i]
                switch cqe.user_data {
                case CompletionTable.wakeUserData:
                    wakeArmed = false
                case CompletionTable.ignoredUserData:
                    break
                default:
                    _ = completions.complete(userData: cqe.user_data, result: cqe.res, flags: cqe.flags)
                }
            }
            total += n
            if n < cqeBatch { return total }
        }
    }

    /// Sleeps in the ring until a completion, a wake-up from another thread, or the timeout (negative: none).
    private func sleep(timeoutNanoseconds: Int64) {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        if hasPendingInbound() || !runQueue.isEmpty || !localCalls.isEmpty {
            sleeping.store(false, ordering: .relaxed)
            return
        }
        if !wakeArmed {
            prepareControl { ring in cs_prep_eventfd_read(ring, wakeFD, wakeCounter, CompletionTable.wakeUserData) }
            wakeArmed = true
        }
        let rc = cs_ring_submit_and_wait(ring, 1, timeoutNanoseconds)
        if rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
            logger.error("io_uring wait failed", metadata: ["errno": "\(-rc)"])
        }
        sleeping.store(false, ordering: .relaxed)
        _ = reap()
    }

    private func hasPendingInbound() -> Bool {
        if foreignPending.load(ordering: .sequentiallyConsistent) { return true }
        for source in 0..<fabric.shardCount where source != index {
            if fabric.withChannel(from: source, to: index, { $0.hasPending() }) { return true }
        }
        return false
    }

    private func cancelAllInFlight() {
        for userData in completions.liveUserData() {
            prepareControl { ring in cs_prep_cancel(ring, userData, CompletionTable.ignoredUserData) }
        }
        _ = cs_ring_submit(ring)
    }
}
