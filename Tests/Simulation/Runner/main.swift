// es-sim: runs the deterministic simulation of a whole cluster (three nodes, two writers) for a list of seeds and
// prints one line per seed. Exits 1 when any seed violates an invariant. See docs/testing.md.
//
//   es-sim [--seeds A-B | --seed N]... [--faults none|mixed] [--seconds S] [--misdirect] [--no-corruption] [--verbose]
//   es-sim --scenario fenced-open [--verbose]
//
// Set SWIFT_DETERMINISTIC_HASHING=1 (Tests/Simulation/run.sh does): without it, dictionary order differs from one
// process to the next and a seed does not replay the same way.
import CSupport
import Foundation
import Logging

var seeds: [UInt64] = []
var scenario: Scenario?
var options = RunOptions()
var arguments = Array(CommandLine.arguments.dropFirst())

func usage(_ message: String) -> Never {
    FileHandle.standardError.write(Data("es-sim: \(message)\nusage: es-sim [--seeds A-B | --seed N]... [--faults none|mixed] [--seconds S] [--misdirect] [--no-corruption] [--verbose] | --scenario fenced-open\n".utf8))
    exit(2)
}

while let argument = arguments.first {
    arguments.removeFirst()
    switch argument {
    case "--seed":
        guard let value = arguments.first.flatMap({ UInt64($0) }) else { usage("--seed needs a number") }
        arguments.removeFirst()
        seeds.append(value)
    case "--seeds":
        guard let text = arguments.first else { usage("--seeds needs A-B") }
        arguments.removeFirst()
        let parts = text.split(separator: "-").compactMap { UInt64($0) }
        guard parts.count == 2, parts[0] <= parts[1] else { usage("--seeds needs A-B") }
        seeds += Array(parts[0]...parts[1])
    case "--faults":
        guard let value = arguments.first.flatMap(FaultLevel.init(rawValue:)) else { usage("--faults none|mixed") }
        arguments.removeFirst()
        options.faults = value
    case "--seconds":
        guard let value = arguments.first.flatMap({ UInt64($0) }), value > 0 else { usage("--seconds needs a number") }
        arguments.removeFirst()
        options.faultSeconds = value
    case "--verbose":
        options.verbose = true
    case "--no-corruption":
        options.corruption = false
    case "--misdirect":
        // Every seed gets the node whose disk misdirects writes (normally 15% of mixed seeds).
        options.misdirection = .always
    case "--scenario":
        guard let value = arguments.first.flatMap(Scenario.init(rawValue:)) else { usage("--scenario fenced-open") }
        arguments.removeFirst()
        scenario = value
    case "--stray-job":
        options.strayJob = true
    case "--help", "-h":
        usage("runs the cluster simulation")
    default:
        usage("unknown argument \(argument)")
    }
}
if seeds.isEmpty { seeds = [1] }
if ProcessInfo.processInfo.environment["SWIFT_DETERMINISTIC_HASHING"] == nil {
    FileHandle.standardError.write(Data("es-sim: warning: SWIFT_DETERMINISTIC_HASHING is not set; seeds will not replay exactly\n".utf8))
}

let verbose = options.verbose
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = verbose ? .info : .critical
    return handler
}

/// Writes a line at once (unbuffered): a seed that crashes the process still leaves the lines before it.
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

if let scenario {
    let violations = scenario.run(verbose: options.verbose)
    emit("scenario \(scenario.rawValue) \(violations.isEmpty ? "ok" : "FAIL")")
    for violation in violations { emit("  violation: \(violation)") }
    exit(violations.isEmpty ? 0 : 1)
}

var failed: [UInt64] = []
var totalSimulated: UInt64 = 0
let began = Date()
let cpuBegan = clock()
for seed in seeds {
    let started = Date()
    if options.verbose { emit("seed \(seed) start") }
    let result = runSeed(seed, options: options)
    let wall = Date().timeIntervalSince(started)
    totalSimulated += result.simulatedNanoseconds
    let status = result.violations.isEmpty ? "ok" : "FAIL"
    emit(String(format: "seed %llu %@ trace=%016llx simulated=%.1fs wall=%.2fs steps=%llu jobs=%llu acked=%d failed=%d crashes=%d %@",
                 seed, status, result.traceHash, Double(result.simulatedNanoseconds) / 1e9, wall, result.steps,
                 result.jobs, result.acknowledged, result.failed, result.crashes, result.summary))
    for violation in result.violations { emit("  violation: \(violation)") }
    if !result.violations.isEmpty { failed.append(seed) }
}
let wall = Date().timeIntervalSince(began)
let cpu = Double(clock() - cpuBegan) / Double(CLOCKS_PER_SEC)
emit(String(format: "seeds %d failed %d wall %.1fs cpu %.1fs seeds/cpu-s %.3f simulated-s/wall-s %.1f",
             seeds.count, failed.count, wall, cpu, Double(seeds.count) / max(cpu, 0.001),
             Double(totalSimulated) / 1e9 / max(wall, 0.001)))
if !failed.isEmpty {
    emit("failing seeds: \(failed.map(String.init).joined(separator: " "))")
    exit(1)
}
exit(0)
