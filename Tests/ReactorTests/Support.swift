import CSupport
import Foundation
import Platform
@testable import Reactor

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

/// A fresh directory, removed afterwards. O_DIRECT needs a disk-backed file system (tmpfs refuses it), so it goes
/// under `ES_TEST_DIR` if set, else /var/tmp, which is on disk where /tmp may be tmpfs.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let parent = ProcessInfo.processInfo.environment["ES_TEST_DIR"] ?? "/var/tmp"
    let path = "\(parent)/es-test-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
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
