import CSupport
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Watches every shard from one thread of its own and logs when a single job has held a shard longer than the
/// configured bound. It costs the shards nothing but a relaxed store per job: each shard bumps its `progress`
/// counter before and after every job (odd while one runs); a counter that stays odd and unchanged for the bound is
/// a stall. This is the shape of Seastar's stall detector, with a thread in place of a timer signal.
final class StallDetector: @unchecked Sendable {
    private let shards: [Shard]
    private let thresholdNanoseconds: UInt64
    private let logger: Logger
    private let stop = Atomic<Bool>(false)
    /// Stalls reported so far, over all shards.
    let stallsReported = Atomic<Int>(0)
    private var thread: OSThread?

    init(shards: [Shard], threshold: Duration, logger: Logger) {
        self.shards = shards
        self.thresholdNanoseconds = max(1_000_000, threshold.wholeNanoseconds)
        self.logger = logger
    }

    func start() {
        thread = OSThread.start(name: "es-stall-watch") { [self] in watch() }
    }

    func shutdown() {
        stop.store(true, ordering: .relaxed)
        thread?.join()
        thread = nil
    }

    private func watch() {
        var seen = shards.map { _ in (value: UInt64(0), since: UInt64(0), reported: false) }
        let interval = useconds_t(max(1000, thresholdNanoseconds / 4_000))
        while !stop.load(ordering: .relaxed) {
            usleep(interval)
            let now = cs_monotonic_ns()
            for (i, shard) in shards.enumerated() {
                let value = shard.progress.load(ordering: .relaxed)
                if value != seen[i].value || value & 1 == 0 {
                    seen[i] = (value, now, false)
                    continue
                }
                let held = now &- seen[i].since
                if held >= thresholdNanoseconds && !seen[i].reported {
                    seen[i].reported = true
                    stallsReported.add(1, ordering: .relaxed)
                    logger.warning(
                        "reactor stall: one task has held the shard too long",
                        metadata: [
                            "shard": "\(shard.index)", "held_ms": "\(held / 1_000_000)",
                            "threshold_ms": "\(thresholdNanoseconds / 1_000_000)",
                        ])
                }
            }
        }
    }
}
