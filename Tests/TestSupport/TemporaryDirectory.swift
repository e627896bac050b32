import Foundation

/// A new, empty directory for one test, named `<prefix>-<uuid>`. O_DIRECT needs a disk-backed file system (tmpfs
/// refuses it), so it goes under `ES_TEST_DIR` if set, else /var/tmp, which is on disk where /tmp may be tmpfs.
public func makeTemporaryDirectory(_ prefix: String = "es-test") throws -> String {
    let parent = ProcessInfo.processInfo.environment["ES_TEST_DIR"] ?? "/var/tmp"
    let path = "\(parent)/\(prefix)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Runs `body` with a new directory (`makeTemporaryDirectory`), removed afterwards.
public func withTemporaryDirectory<T>(_ prefix: String = "es-test", _ body: (String) async throws -> T)
    async throws -> T
{
    let path = try makeTemporaryDirectory(prefix)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}
