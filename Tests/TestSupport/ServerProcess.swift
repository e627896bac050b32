import Foundation

/// Where `swift build` put the server: beside the test binary.
public func serverPath() -> String {
    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        .appendingPathComponent("elastic-stream").path
}

/// Why a server process did not start: what it printed before giving up.
public struct ServerStartFailure: Error, CustomStringConvertible {
    public let description: String
}

/// Starts `elastic-stream --config path` (stderr to `stderr`, or discarded) and waits, at most `within` seconds, for
/// its READY line. The caller owns the returned process.
public func launchServer(config path: String, stderr: FileHandle? = nil, within: TimeInterval = 30) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: serverPath())
    process.arguments = ["--config", path]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = stderr ?? FileHandle(forWritingAtPath: "/dev/null")
    try process.run()
    let handle = output.fileHandleForReading
    var seen = Data()
    let deadline = Date().addingTimeInterval(within)
    while Date() < deadline {
        let chunk = handle.availableData
        if chunk.isEmpty { break }
        seen += chunk
        if String(decoding: seen, as: UTF8.self).contains("READY") { return process }
    }
    kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
    throw ServerStartFailure(description: "\(path) did not start: \(String(decoding: seen, as: UTF8.self))")
}
