import CBaselines
import CSupport
import Foundation
import Platform
import Reactor
import Configuration

/// `es-perf reactor`: the cost of the reactor's primitives beside what the hardware and liburing give alone.
struct ReactorSuite: FigureSuite {
    let options: PerfOptions

    func run() async throws {
        var cpus = allowedCPUs()
        guard cpus.count >= 2 else { throw PerfError("needs two CPUs; this process may use \(cpus)") }
        var configuration = ReactorConfiguration(
            cpus: Array(cpus.prefix(2)), pinThreads: options.pin,
            // Virtualized: poll longer before sleeping (Seastar polls 2 ms on VMs).
            pollDuration: .milliseconds(2), stallThreshold: nil, bufferCount: 8, useHugePages: true)
        if let file = options.configFile {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            configuration = try ReactorConfiguration(configurationText: text, file: file)
            if (configuration.cpus ?? cpus).count < 2 { throw PerfError("\(file): the suite needs two shards") }
        }
        note("reactor: cpus \(configuration.cpus ?? cpus), pinned \(configuration.pinThreads), "
             + "poll \(configuration.pollDuration)")
        let reactor = try Reactor(configuration: configuration)
        defer { reactor.shutdown() }
        cpus = reactor.shards.map(\.cpu)
        let scale = options.quick ? 10 : 1

        let only = options.only
        if only == nil || only == "nop" { try await nops(reactor, total: 2_000_000 / scale, depth: 32, cpu: cpus[0]) }
        if only == nil || only == "hop" { try await jobHop(reactor, count: 2_000_000 / scale) }
        if only == nil || only == "cross" {
            try await crossShard(reactor, roundTrips: 200_000 / scale, cpus: (cpus[0], cpus[1]))
        }
        if only == nil || only == "write" {
            try await writeFdatasync(reactor, sizeBytes: options.quick ? 16 << 20 : 256 << 20, cpu: cpus[0])
        }
    }

    private func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = cs_allowed_cpus(&cpus, 1024)
        return cpus.prefix(Int(max(0, n))).map(Int.init)
    }

    let suiteName = "reactor"

    // MARK: NOPs

    /// `depth` NOPs kept in flight on shard 0 through the reactor's completion path, against the same batch size
    /// submitted and reaped by a plain C loop over liburing on the same CPU. Interleaved trials; medians.
    private func nops(_ reactor: Reactor, total: Int, depth: Int, cpu: Int) async throws {
        let trials = 5
        let perTrial = total / trials
        var viaCallbacks: [Double] = []
        var viaTasks: [Double] = []
        var baselines: [Double] = []
        for _ in 0..<trials {
            viaCallbacks.append(try await reactor.run(on: 0) { context -> Double in
                let state = NopState(remaining: perTrial)
                let start = cs_monotonic_ns()
                await withUnsafeContinuation { continuation in
                    state.finished = continuation
                    for _ in 0..<depth { try? submitNop(context, state) }
                }
                return Double(perTrial) / (Double(cs_monotonic_ns() - start) / 1e9)
            })
            viaTasks.append(try await reactor.run(on: 0) { context -> Double in
                let shard = context.shard
                let perTask = perTrial / depth / 4
                let start = cs_monotonic_ns()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<depth {
                        group.addTask {
                            let context = ShardContext(shard: shard)
                            for _ in 0..<perTask { try await context.nop() }
                        }
                    }
                    try await group.waitForAll()
                }
                return Double(perTask * depth) / (Double(cs_monotonic_ns() - start) / 1e9)
            })
            // Let shard 0 fall asleep so the baseline has its CPU.
            try await Task.sleep(for: .milliseconds(10))
            let saved = pinMainThread(cpu)
            baselines.append(cb_nop_ops_per_second(UInt64(perTrial), UInt32(depth)))
            restoreMainThread(saved)
        }
        let name = "liburing C loop, \(depth) per submit, same CPU"
        emit("nop_ops_per_s", median(viaCallbacks), "ops/s", .higher, name, median(baselines))
        emit("nop_async_ops_per_s", median(viaTasks), "ops/s", .higher, name, median(baselines))
    }

    // MARK: Job hop

    /// A Swift job enqueued on and run by the same shard: `Task.yield()` from an actor bound to the shard, and from
    /// a plain task that prefers the shard; and a reactor closure posted to its own shard. Median of `trials`.
    private func jobHop(_ reactor: Reactor, count: Int) async throws {
        let trials = 5
        var actorHops: [Double] = []
        var taskHops: [Double] = []
        var callHops: [Double] = []
        var direct: [Double] = []
        let actor = HopActor(shard: reactor.shards[0])
        for _ in 0..<trials {
            actorHops.append(try await reactor.run(on: 0) { _ in await actor.yieldLoop(count) })
            taskHops.append(try await reactor.run(on: 0) { _ -> Double in
                let start = cs_monotonic_ns()
                for _ in 0..<count { await Task.yield() }
                return Double(cs_monotonic_ns() - start) / Double(count)
            })
            callHops.append(try await reactor.run(on: 0) { context -> Double in
                let chain = CallChain(shard: context.shard, remaining: count)
                let start = cs_monotonic_ns()
                await withUnsafeContinuation { continuation in
                    chain.finished = continuation
                    chain.step()
                }
                return Double(cs_monotonic_ns() - start) / Double(count)
            })
            direct.append(cb_direct_call_ns(UInt64(count) * 10))
        }
        let baseline = "direct call of an opaque C function"
        emit("job_hop_ns", median(actorHops), "ns", .lower, baseline, median(direct))
        emit("job_hop_task_ns", median(taskHops), "ns", .lower, baseline, median(direct))
        emit("call_hop_ns", median(callHops), "ns", .lower, baseline, median(direct))
    }

    // MARK: Cross-shard

    /// Round trips between shard 0 and shard 1 against an atomic ping-pong between the same two CPUs; trials are
    /// interleaved (ours, then the baseline) and the median of each is reported.
    private func crossShard(_ reactor: Reactor, roundTrips: Int, cpus: (Int, Int)) async throws {
        let trials = 5
        var messages: [Double] = []
        var submits: [Double] = []
        var baselines: [Double] = []
        for _ in 0..<trials {
            // Raw messages: shard 0 posts to shard 1, which posts straight back, `roundTrips` times in sequence.
            messages.append(try await reactor.run(on: 0) { _ -> Double in
                let ping = PingPong(reactor: reactor, remaining: roundTrips)
                let start = cs_monotonic_ns()
                await withUnsafeContinuation { continuation in
                    ping.finished = continuation
                    ping.bounce()
                }
                return Double(cs_monotonic_ns() - start) / Double(roundTrips)
            })
            // submit(to:): a task on shard 0 awaits a closure run on shard 1.
            submits.append(try await reactor.run(on: 0) { _ -> Double in
                let start = cs_monotonic_ns()
                var sink = 0
                for i in 0..<roundTrips { sink &+= try await reactor.submit(to: 1) { i } }
                precondition(sink != -1)
                return Double(cs_monotonic_ns() - start) / Double(roundTrips)
            })
            // Let both shards fall asleep so the baseline has the CPUs to itself.
            try await Task.sleep(for: .milliseconds(10))
            baselines.append(cb_atomic_pingpong_ns(Int32(cpus.0), Int32(cpus.1), UInt64(roundTrips)))
        }
        let name = "atomic ping-pong between two pinned threads"
        emit("cross_shard_rtt_ns", median(messages), "ns", .lower, name, median(baselines))
        emit("cross_shard_submit_rtt_ns", median(submits), "ns", .lower, name, median(baselines))
    }

    // MARK: Write + fdatasync

    /// 4 KiB O_DIRECT writes into a preallocated, fully written file, each followed by fdatasync, one at a time. In
    /// `rounds` interleaved rounds over the same file: fio, a plain C loop over liburing (on shard 0's CPU while the
    /// shard sleeps), then the reactor. Our percentiles come from all rounds' samples; fio's are the median over
    /// rounds of each percentile it reports.
    private func writeFdatasync(_ reactor: Reactor, sizeBytes: Int, cpu: Int) async throws {
        guard Fio.available() else { throw PerfError("fio is not installed (apt-get install fio)") }
        let path = "\(options.directory)/es-perf-write-\(getpid())"
        defer { unlink(path) }
        let block = 4096
        let count = sizeBytes / block
        // Preallocate and write the whole file once, so fio, the C loop and the reactor all overwrite written space.
        _ = try await reactor.run(on: 0) { context -> Int in
            let file = try await context.open(path, options: FileOpenOptions(create: true, truncate: true))
            try await file.allocate(at: 0, length: UInt64(sizeBytes))
            let buffer = try await context.buffers.acquire()
            memset(buffer.base, 0x5a, buffer.count)
            var offset = 0
            while offset < sizeBytes {
                let n = min(buffer.count, sizeBytes - offset)
                offset += try await file.write(buffer, length: n, at: UInt64(offset))
            }
            try await file.fullSync()
            try await file.close()
            return 0
        }
        let rounds = 3
        var fioRounds: [Fio.Latencies] = []
        var raw: [UInt64] = []
        var total: [UInt64] = []
        var writes: [UInt64] = []
        var syncs: [UInt64] = []
        for _ in 0..<rounds {
            fioRounds.append(try Fio.writeWithFdatasync(file: path, sizeBytes: sizeBytes, blockBytes: block))
            var samples = [UInt64](repeating: 0, count: count)
            let saved = pinMainThread(cpu)
            let rc = cb_write_fdatasync(path, UInt32(block), UInt32(count), &samples)
            restoreMainThread(saved)
            if rc < 0 { throw PerfError("liburing write+fdatasync baseline failed: errno \(-rc)") }
            raw += samples
            let ours = try await reactor.run(on: 0) { context -> [[UInt64]] in
                let file = try await context.open(path, options: FileOpenOptions())
                let buffer = try await context.buffers.acquire()
                memset(buffer.base, 0xa5, block)
                let data = UnsafeRawBufferPointer(start: buffer.base, count: block)
                var total = [UInt64](repeating: 0, count: count)
                var writes = [UInt64](repeating: 0, count: count)
                var syncs = [UInt64](repeating: 0, count: count)
                for i in 0..<count {
                    let t0 = cs_monotonic_ns()
                    _ = try await file.write(data, at: UInt64(i * block))
                    let t1 = cs_monotonic_ns()
                    try await file.sync()
                    let t2 = cs_monotonic_ns()
                    writes[i] = t1 - t0
                    syncs[i] = t2 - t1
                    total[i] = t2 - t0
                }
                try await file.close()
                return [total, writes, syncs]
            }
            total += ours[0]
            writes += ours[1]
            syncs += ours[2]
        }
        total.sort()
        writes.sort()
        syncs.sort()
        raw.sort()
        func fio(_ section: KeyPath<Fio.Latencies, [Double: Double]>, _ p: Double) -> Double {
            median(fioRounds.map { $0[keyPath: section][p] ?? .nan })
        }
        for (label, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
            emit("write_fdatasync_\(label)_us", percentile(total, p) / 1000, "us", .lower,
                 "fio io_uring direct 4k fdatasync=1: write lat \(label) + fdatasync lat \(label)",
                 fio(\.write, p) + fio(\.sync, p))
        }
        for (label, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
            emit("write_fdatasync_raw_\(label)_us", percentile(total, p) / 1000, "us", .lower,
                 "C loop over liburing: write, then fdatasync, each waited, same CPU", percentile(raw, p) / 1000)
        }
        emit("write_p50_us", percentile(writes, 50) / 1000, "us", .lower, "fio write lat p50", fio(\.write, 50))
        emit("fdatasync_p50_us", percentile(syncs, 50) / 1000, "us", .lower, "fio fdatasync lat p50", fio(\.sync, 50))
        let ourRate = Double(total.count) / (Double(total.reduce(0, +)) / 1e9)
        emit("write_fdatasync_ops_per_s", ourRate, "ops/s", .higher, "fio write+fdatasync IOPS",
             median(fioRounds.map(\.iops)))
    }
}

// MARK: - Helpers that live on a shard

/// Counts NOP completions on shard 0 and keeps the pipeline full from the completion callback itself.
final class NopState: @unchecked Sendable {
    var remaining: Int
    let total: Int
    var completed = 0
    var finished: UnsafeContinuation<Void, Never>?
    /// One completion handler for every NOP, made once: a handler per request would be an allocation per request.
    var callback: ((Int32) -> Void)?
    init(remaining: Int) {
        self.remaining = remaining
        self.total = remaining
    }
}

func submitNop(_ context: ShardContext, _ state: NopState) throws(IOError) {
    if state.callback == nil {
        let shard = context.shard
        state.callback = { [unowned(unsafe) state] _ in
            state.completed += 1
            if state.completed == state.total {
                state.callback = nil
                state.finished?.resume()
            } else {
                try? submitNop(ShardContext(shard: shard), state)
            }
        }
    }
    guard state.remaining > 0 else { return }
    state.remaining -= 1
    try context.nop(callback: state.callback!)
}

/// A message bounced between shard 0 and shard 1 until `remaining` round trips are done.
final class PingPong: @unchecked Sendable {
    let reactor: Reactor
    var remaining: Int
    var finished: UnsafeContinuation<Void, Never>?
    init(reactor: Reactor, remaining: Int) {
        self.reactor = reactor
        self.remaining = remaining
    }

    /// On shard 0: send to shard 1, which answers at once.
    func bounce() {
        if remaining == 0 {
            finished?.resume()
            return
        }
        remaining -= 1
        let home = reactor.shards[0]
        reactor.shards[1].post { [self] in home.post { self.bounce() } }
    }
}

/// An actor bound to a shard: its methods run on that shard's thread.
actor HopActor {
    let shard: Shard
    nonisolated var unownedExecutor: UnownedSerialExecutor { shard.asUnownedSerialExecutor() }
    init(shard: Shard) { self.shard = shard }

    func yieldLoop(_ count: Int) async -> Double {
        let start = cs_monotonic_ns()
        for _ in 0..<count { await Task.yield() }
        return Double(cs_monotonic_ns() - start) / Double(count)
    }
}

/// A closure that posts its successor to its own shard `remaining` times: the reactor's own job, without a task.
final class CallChain: @unchecked Sendable {
    let shard: Shard
    var remaining: Int
    var finished: UnsafeContinuation<Void, Never>?
    init(shard: Shard, remaining: Int) {
        self.shard = shard
        self.remaining = remaining
    }

    func step() {
        if remaining == 0 {
            finished?.resume()
            return
        }
        remaining -= 1
        shard.post { [self] in step() }
    }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

private func pinMainThread(_ cpu: Int) -> [Int32] {
    var saved = [Int32](repeating: 0, count: 1024)
    let n = cs_allowed_cpus(&saved, 1024)
    _ = cs_pin_current_thread(Int32(cpu))
    return Array(saved.prefix(Int(max(0, n))))
}

private func restoreMainThread(_ cpus: [Int32]) {
    _ = cs_set_current_thread_cpus(cpus, Int32(cpus.count))
}
