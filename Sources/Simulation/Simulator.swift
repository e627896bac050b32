import CSupport
import Platform
import Reactor

/// A deterministic simulation of whole processes (placement driver members, range servers, clients) on one thread.
///
/// Every simulated process is a `Reactor(simulation:)` whose shards have no thread and no ring: their jobs and posted
/// calls come here, and so do their clocks, timers, files and connections. The simulator runs one thing at a time: the
/// next job of a shard drawn by the seeded generator (each shard's own jobs in order, as its thread would run them),
/// or, when no job is ready, the earliest timer, moving virtual time forward to it. Same seed, same program: same
/// run, event for event, which `traceHash` sums up. A job that reaches Swift's global executor is not run and fails the
/// run (`strayJobs`).
///
/// Not Sendable in spirit: everything here is touched by the simulator's one thread only.
public final class Simulator: @unchecked Sendable {
    public let seed: UInt64
    var generator: SplitMix64
    /// Virtual time, in nanoseconds since the run began.
    public private(set) var now: UInt64 = 0
    /// How much virtual time one job costs (so that busy work moves the clock too).
    public var jobCost: UInt64 = 1_000
    public private(set) var steps: UInt64 = 0
    public private(set) var traceHash: UInt64 = 0xcbf2_9ce4_8422_2325
    /// Per-kind counts of what ran, for the report.
    public private(set) var jobsRun: UInt64 = 0
    public private(set) var timersFired: UInt64 = 0

    public private(set) var processes: [SimulatedProcess] = []
    public let network: SimulatedNetwork

    private var ready: [RunQueue] = []
    private var queues: [ObjectIdentifier: RunQueue] = [:]
    private var timers = TimerHeap()
    private var timerSequence: UInt64 = 0
    private let strayAtStart: UInt64

    public init(seed: UInt64) {
        self.seed = seed
        generator = SplitMix64(seed: seed)
        network = SimulatedNetwork()
        cs_become_simulation_thread()
        strayAtStart = cs_simulation_stray_jobs()
        network.simulator = self
    }

    /// Jobs the simulated processes handed to Swift's global executor (never run): any makes the run invalid.
    public var strayJobs: UInt64 { cs_simulation_stray_jobs() - strayAtStart }

    // MARK: Randomness

    public func next() -> UInt64 { generator.next() }

    /// A uniform number in `0..<bound` (bound > 0).
    public func below(_ bound: UInt64) -> UInt64 { bound <= 1 ? 0 : generator.next() % bound }

    /// True with probability `p`.
    public func chance(_ p: Double) -> Bool {
        p > 0 && Double(generator.next() >> 11) / Double(1 << 53) < p
    }

    /// A duration drawn uniformly from `range` (nanoseconds).
    public func between(_ low: UInt64, _ high: UInt64) -> UInt64 { high <= low ? low : low + below(high - low + 1) }

    // MARK: Trace

    /// Folds an event into the trace hash (FNV-1a over 64-bit words).
    public func trace(_ words: UInt64...) {
        for word in words {
            traceHash = (traceHash ^ word) &* 0x100_0000_01b3
        }
    }

    // MARK: Processes

    /// Adds a process (a node or a client) with its own address on loopback, disk and clock. Start it with `start`.
    public func addProcess(name: String, host: String) -> SimulatedProcess {
        let process = SimulatedProcess(simulator: self, id: processes.count + 1, name: name, host: host)
        processes.append(process)
        return process
    }

    // MARK: Scheduling

    func schedule(_ item: RunItem, on shard: Shard, of process: SimulatedProcess, generation: Int) {
        guard process.isAlive, process.generation == generation else { return }
        let key = ObjectIdentifier(shard)
        let queue: RunQueue
        if let existing = queues[key] {
            queue = existing
        } else {
            queue = RunQueue(shard: shard, process: process, generation: generation)
            queues[key] = queue
        }
        queue.items.push(item)
        if !queue.listed && !process.isPaused {
            queue.listed = true
            ready.append(queue)
        }
    }

    /// Forgets every queued job of `process` (it crashed): they never run.
    func dropQueues(of process: SimulatedProcess) {
        ready.removeAll { $0.process === process }
        for queue in queues.values where queue.process === process {
            queue.items.removeAll()
            queue.listed = false
        }
        queues = queues.filter { $0.value.process !== process }
    }

    /// Takes a paused process's queues off the ready list, or puts them back.
    func setPaused(_ process: SimulatedProcess, _ paused: Bool) {
        if paused {
            for queue in ready where queue.process === process { queue.listed = false }
            ready.removeAll { $0.process === process }
        } else {
            // In the order the queues were made, so that resuming is deterministic.
            for queue in process.runQueues where !queue.items.isEmpty && !queue.listed {
                queue.listed = true
                ready.append(queue)
            }
        }
    }

    /// Runs `action` at virtual time `at` (or now, if that has passed).
    public func at(_ at: UInt64, _ action: @escaping () -> Void) {
        timerSequence += 1
        timers.push(TimerEntry(at: max(at, now), sequence: timerSequence, action: action))
    }

    /// Runs `action` `delay` nanoseconds from now.
    public func after(_ delay: UInt64, _ action: @escaping () -> Void) { at(now &+ delay, action) }

    /// Runs one step: a due timer, else a ready job, else the earliest timer (moving time to it). Returns false when
    /// nothing at all is left to do.
    @discardableResult
    public func step() -> Bool {
        steps += 1
        if let due = timers.peek, due.at <= now {
            let entry = timers.pop()!
            timersFired += 1
            trace(1, entry.at)
            entry.action()
            return true
        }
        if !ready.isEmpty {
            let index = Int(below(UInt64(ready.count)))
            let queue = ready[index]
            let item = queue.items.pop()!
            if queue.items.isEmpty {
                queue.listed = false
                ready.swapAt(index, ready.count - 1)
                ready.removeLast()
            }
            jobsRun += 1
            now &+= jobCost
            trace(2, UInt64(queue.process.id), UInt64(queue.shard.index), now)
            switch item {
            case .job(let job): queue.shard.runSimulated(job)
            case .call(let call): queue.shard.runSimulated(call)
            }
            return true
        }
        guard let next = timers.peek else { return false }
        now = max(now, next.at)
        return true
    }

    /// Runs until `done()` holds (checked between steps), virtual time passes `deadline`, or nothing is left to do.
    /// Returns whether `done()` held.
    @discardableResult
    public func run(until deadline: UInt64, done: () -> Bool = { false }) -> Bool {
        while now < deadline {
            if done() { return true }
            if !step() { return done() }
        }
        return done()
    }

    /// Ends the run: every process crashes, every timer and queued job is dropped, and the disks let go of their
    /// bytes. The tasks of the run stay suspended forever (nothing resumes them), holding little.
    public func tearDown() {
        for process in processes {
            process.crash()
            process.disk.wipe()
        }
        timers = TimerHeap()
        ready = []
        queues = [:]
        network.tearDown()
    }
}

enum RunItem {
    case job(UnownedJob)
    case call(@Sendable () -> Void)
}

/// One shard's jobs, in order.
final class RunQueue {
    let shard: Shard
    unowned let process: SimulatedProcess
    let generation: Int
    var items = FIFO<RunItem>()
    var listed = false

    init(shard: Shard, process: SimulatedProcess, generation: Int) {
        self.shard = shard
        self.process = process
        self.generation = generation
        process.runQueues.append(self)
    }
}

struct TimerEntry {
    var at: UInt64
    var sequence: UInt64
    var action: () -> Void
}

/// A binary min-heap of timers by (time, sequence): equal times fire in the order they were set.
struct TimerHeap {
    private var entries: [TimerEntry] = []

    var peek: TimerEntry? { entries.first }

    private static func less(_ a: TimerEntry, _ b: TimerEntry) -> Bool {
        a.at != b.at ? a.at < b.at : a.sequence < b.sequence
    }

    mutating func push(_ entry: TimerEntry) {
        entries.append(entry)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.less(entries[child], entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> TimerEntry? {
        guard !entries.isEmpty else { return nil }
        entries.swapAt(0, entries.count - 1)
        let top = entries.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < entries.count && Self.less(entries[left], entries[smallest]) { smallest = left }
            if right < entries.count && Self.less(entries[right], entries[smallest]) { smallest = right }
            if smallest == parent { break }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}

/// A first-in first-out queue over an array, compacted as it drains.
struct FIFO<Element> {
    private var storage: [Element?] = []
    private var head = 0

    var isEmpty: Bool { head == storage.count }

    mutating func push(_ element: Element) { storage.append(element) }

    mutating func pop() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        storage[head] = nil
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    var first: Element? { head < storage.count ? storage[head] : nil }

    mutating func removeAll() {
        storage.removeAll()
        head = 0
    }
}

/// SplitMix64: small, fast and seedable.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Carries a value the compiler must treat as Sendable through a closure that only ever runs on the simulator's one
/// thread (a cancellation handler, a posted call).
struct SimulatorBound<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
