import CSupport
import Foundation
import Platform
@testable import Reactor
import TestSupport

import Testing

/// Every suite of this target runs inside this one, one test at a time: tests count the threads and descriptors of
/// the whole process, and the machine has two cores.
@Suite(.serialized) enum Serialized {}

/// Runs `body` with a fresh reactor for tests (unpinned, short polling) and always shuts it down.
func withReactor<T>(
    _ configuration: ReactorConfiguration = .testing(), _ body: (Reactor) async throws -> T
) async throws -> T {
    let reactor = try Reactor(configuration: configuration)
    defer { reactor.shutdown() }
    return try await body(reactor)
}

/// Threads of this process, from /proc/self/task.
func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// A counter that only its shard touches; the box lets Sendable closures carry it there.
final class ShardCounter: @unchecked Sendable {
    var value = 0
    var outOfOrder = 0
    var wrongThread = 0
}

extension IOError.Kind {
    var isCancelled: Bool { if case .cancelled = self { return true } else { return false } }
    var isTimedOut: Bool { if case .timedOut = self { return true } else { return false } }
}
