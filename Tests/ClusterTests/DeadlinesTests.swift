import Platform
import Reactor
import TestSupport
import Testing
import Transport

/// The one deadline sweeper (`Deadlines`): what is set expires once, in deadline order, after its deadline; what is
/// removed never expires; setting again moves a deadline.
@Suite struct DeadlinesTests {
    @Test func deadlinesExpireInOrderOnceAndRemovedOnesNever() async throws {
        let reactor = try Reactor(configuration: .testing(shards: 1))
        defer { reactor.shutdown() }
        let outcome = try await reactor.run(on: 0) { context -> (expired: [Int], early: Int, late: [Int], disorder: Int) in
            final class Log {
                var expired: [(key: Int, at: Instant)] = []
            }
            let log = Log()
            let deadlines = Deadlines<Int>(on: context, resolution: .milliseconds(5)) { key in
                log.expired.append((key, context.now))
            }
            var generator = SeededGenerator(seed: 12)
            let start = context.now
            var due: [Int: Instant] = [:]
            for key in 0..<2_000 {
                let deadline = start + .milliseconds(Int64.random(in: 20...300, using: &generator))
                deadlines.set(key, deadline)
                due[key] = deadline
            }
            // Half are removed, a tenth moved later.
            for key in stride(from: 0, to: 2_000, by: 2) {
                deadlines.remove(key)
                due[key] = nil
            }
            for key in stride(from: 1, to: 2_000, by: 10) {
                let later = start + .milliseconds(400)
                deadlines.set(key, later)
                due[key] = later
            }
            // Wait (generously) until every remaining one expired.
            let wait = context.now + .seconds(30)
            while deadlines.count > 0 && context.now < wait { try await context.sleep(for: .milliseconds(10)) }
            try await context.sleep(for: .milliseconds(50))
            let early = log.expired.filter { $0.at < due[$0.key] ?? start }.count
            let order = log.expired.compactMap { due[$0.key] }
            let disorder = zip(order, order.dropFirst()).filter { $0 > $1 }.count
            return (log.expired.map(\.key), early, log.expired.map(\.key).filter { due[$0] == nil }, disorder)
        }
        #expect(Set(outcome.expired).count == outcome.expired.count, "a deadline expired twice")
        #expect(outcome.expired.count == 1_000, "\(outcome.expired.count) of 1,000 deadlines expired")
        #expect(outcome.early == 0, "\(outcome.early) expired before their deadline")
        #expect(outcome.disorder == 0, "\(outcome.disorder) deadlines expired before an earlier one")
        #expect(outcome.late.isEmpty, "removed deadlines expired: \(outcome.late.prefix(5))")
    }
}
