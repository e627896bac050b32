import Foundation
import Testing

/// Runs the cluster simulation (Tests/Simulation/Runner, the `es-sim` executable) the way Tests/Simulation/run.sh
/// does: built in release mode (a debug build runs a seed about ten times slower), in child processes with
/// SWIFT_DETERMINISTIC_HASHING=1, so that a crash in the engine fails the seed rather than the test runner, and every
/// seed replays exactly.
@Suite(.serialized)
struct SimulationTests {
    /// The package's root (this file is Tests/SimulationTests/SimulationTests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Builds es-sim (release) in its own scratch directory, apart from the one `swift test` holds.
    static func simulator() throws -> URL {
        let scratch = root.appendingPathComponent(".build-sim")
        let (status, output) = try run(URL(fileURLWithPath: "/usr/bin/env"),
                                       ["swift", "build", "-c", "release", "--product", "es-sim",
                                        "--scratch-path", scratch.path], in: root)
        guard status == 0 else { throw Failure(description: "building es-sim failed:\n\(output.suffix(4000))") }
        return scratch.appendingPathComponent("release/es-sim")
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// Runs a process to its end; returns its status and everything it printed.
    static func run(_ executable: URL, _ arguments: [String], in directory: URL? = nil,
                    environment extra: [String: String] = [:]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func seedLines(_ output: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { $0.hasPrefix("seed ") && !$0.hasSuffix(" start") }
    }

    /// The same seed twice gives the same trace; another seed gives another.
    @Test func aSeedReplaysExactly() throws {
        let simulator = try Self.simulator()
        var traces: [String] = []
        for seed in ["11", "11", "12"] {
            let (status, output) = try Self.run(simulator, ["--seed", seed, "--seconds", "8"],
                                                environment: ["SWIFT_DETERMINISTIC_HASHING": "1"])
            let line = try #require(Self.seedLines(output).first, "no result line:\n\(output.suffix(2000))")
            #expect(status == 0, "seed \(seed) failed:\n\(output.suffix(3000))")
            let trace = try #require(line.split(separator: " ").first { $0.hasPrefix("trace=") })
            traces.append(String(trace))
        }
        #expect(traces[0] == traces[1], "seed 11 gave two traces: \(traces)")
        #expect(traces[0] != traces[2], "seeds 11 and 12 gave the same trace: \(traces)")
    }

    /// Seed 990's bug as an arranged interleaving (`es-sim --scenario fenced-open`): an open whose placement driver
    /// answer arrives after a newer writer fenced the range's replicas fails with `fenced` at once (it used to retry
    /// for the 30 s failover timeout).
    @Test func aStaleOpenIsFencedAtOnce() throws {
        let simulator = try Self.simulator()
        let (status, output) = try Self.run(simulator, ["--scenario", "fenced-open"],
                                            environment: ["SWIFT_DETERMINISTIC_HASHING": "1"])
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(output.contains("scenario fenced-open ok"), "\(output.suffix(3000))")
    }

    /// A job that reaches Swift's global executor is caught: the run fails (and the job never runs).
    @Test func aJobOnTheGlobalExecutorFailsTheRun() throws {
        let simulator = try Self.simulator()
        let (status, output) = try Self.run(simulator, ["--seed", "3", "--seconds", "4", "--stray-job"],
                                            environment: ["SWIFT_DETERMINISTIC_HASHING": "1"])
        #expect(status == 1, "the run with a stray job passed:\n\(output.suffix(2000))")
        #expect(output.contains("Swift's global executor"), "no violation names the global executor:\n\(output.suffix(2000))")
        #expect(!output.contains("a stray job ran"), "the stray job ran")
    }

    /// 500 seeds of mixed faults (crashes, pauses, partitions, resets, clock jumps and drift, slow, failing and
    /// corrupting disks) with two writers; every invariant holds in each. ES_SIM_SEEDS changes the count.
    @Test func fiveHundredSeedsOfMixedFaults() throws {
        let simulator = try Self.simulator()
        let count = Int(ProcessInfo.processInfo.environment["ES_SIM_SEEDS"] ?? "") ?? 500
        let batch = 25
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
        // Batches run on every core at once; each is its own process (memory stays bounded, a crash loses one batch).
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var lines: [String] = []
            var problems: [String] = []
        }
        let results = Results()
        let batches = stride(from: 1, through: count, by: batch).map { ($0, min($0 + batch - 1, count)) }
        let queue = DispatchQueue(label: "simulation", attributes: .concurrent)
        let group = DispatchGroup()
        let slots = DispatchSemaphore(value: cores)
        for (low, high) in batches {
            slots.wait()
            group.enter()
            queue.async {
                defer {
                    slots.signal()
                    group.leave()
                }
                let outcome = Result { try Self.run(simulator, ["--seeds", "\(low)-\(high)"],
                                                    environment: ["SWIFT_DETERMINISTIC_HASHING": "1"]) }
                results.lock.lock()
                defer { results.lock.unlock() }
                switch outcome {
                case .success(let (status, output)):
                    let lines = Self.seedLines(output)
                    results.lines += lines
                    if lines.count != high - low + 1 {
                        results.problems.append("batch \(low)-\(high) stopped after \(lines.count) seeds (status \(status)):\n\(output.suffix(3000))")
                    }
                    for line in lines where line.contains(" FAIL ") {
                        let violations = output.split(separator: "\n").drop { !$0.hasPrefix(line.prefix(12)) }
                            .dropFirst().prefix { $0.hasPrefix("  violation") }
                        results.problems.append(line + "\n" + violations.joined(separator: "\n"))
                    }
                case .failure(let error):
                    results.problems.append("batch \(low)-\(high): \(error)")
                }
            }
        }
        group.wait()
        #expect(results.lines.count == count, "\(results.lines.count) of \(count) seeds reported")
        #expect(results.problems.isEmpty, "\(results.problems.count) failures; replay one with SWIFT_DETERMINISTIC_HASHING=1 .build-sim/release/es-sim --seed S --verbose\n\(results.problems.prefix(5).joined(separator: "\n"))")
    }
}
