// elastic-stream: the server process. Reads a configuration file from Config/, starts the reactor, an embedded
// placement driver member (a single-member quorum by default, or the members the file lists) and the range server
// (one store and one port per shard), serves until SIGTERM or SIGINT, then reports the range server offline, sends
// GOAWAY to its clients, drains and stops cleanly.
//
//   elastic-stream [--config FILE]      (default: Config/standalone.toml)
import Dispatch
import Foundation
import Logging
import Configuration
import PlacementDriver
import Raft
import RangeServer
import Reactor
import Synchronization

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("elastic-stream: \(message)\n".utf8))
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())
var configurationPath = "Config/standalone.toml"
while let argument = arguments.first {
    arguments.removeFirst()
    switch argument {
    case "--config":
        guard let path = arguments.first else { fail("--config needs a file") }
        configurationPath = path
        arguments.removeFirst()
    case "--help", "-h":
        print("usage: elastic-stream [--config FILE]   (default: Config/standalone.toml)")
        exit(0)
    default:
        fail("unknown argument '\(argument)' (try --help)")
    }
}

guard let text = try? String(contentsOfFile: configurationPath, encoding: .utf8) else {
    fail("cannot read the configuration file \(configurationPath)")
}
let reactorConfiguration: ReactorConfiguration
let pdConfiguration: PDConfiguration
let serverConfiguration: RangeServerConfiguration
do {
    reactorConfiguration = try ReactorConfiguration(configurationText: text, file: configurationPath)
    pdConfiguration = try PDConfiguration(configurationText: text, file: configurationPath)
    serverConfiguration = try RangeServerConfiguration(configurationText: text, file: configurationPath)
} catch {
    fail("\(error)")
}

LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .info
    return handler
}
let logger = Logger(label: "elastic-stream")

/// Set by SIGTERM or SIGINT; the server polls it.
final class StopRequest: Sendable {
    private let flag = Atomic<Bool>(false)
    var requested: Bool { flag.load(ordering: .acquiring) }
    func request() { flag.store(true, ordering: .releasing) }
}
/// SIGTERM and SIGINT request a stop (handled on a dispatch queue, never on a shard).
nonisolated func installSignalHandlers(_ stop: StopRequest) -> [DispatchSourceSignal] {
    signal(SIGTERM, SIG_IGN)
    signal(SIGINT, SIG_IGN)
    return [SIGTERM, SIGINT].map { number in
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { @Sendable in
            Logger(label: "elastic-stream").info("signal received: stopping",
                                                 metadata: ["signal": "\(number == SIGTERM ? "SIGTERM" : "SIGINT")"])
            stop.request()
        }
        source.resume()
        return source
    }
}
let stop = StopRequest()
let signalSources = installSignalHandlers(stop)

let reactor: Reactor
do {
    reactor = try Reactor(configuration: reactorConfiguration)
} catch {
    fail("the reactor did not start: \(error)")
}

// A disk that fails under the WAL or the Raft log ends the process (exit 70): a supervisor restarts it, and recovery
// starts from what is durable, rather than the node serving on with a dead shard or a stopped member.
reactor.onFatalFailure { reason in
    Logger(label: "elastic-stream").critical("fatal storage failure: exiting", metadata: ["reason": "\(reason)"])
    _exit(70)
}

let own = pdConfiguration.ownAddress!
let settings = PDMember.Settings(
    id: pdConfiguration.memberID, initialVoters: Set(pdConfiguration.members.map(\.id)),
    directory: pdConfiguration.dataDirectory, tick: pdConfiguration.tick,
    raft: RaftConfiguration(electionTicks: pdConfiguration.electionTicks, heartbeatTicks: pdConfiguration.heartbeatTicks),
    stateMachine: .init(heartbeatTimeoutMilliseconds: Int64(pdConfiguration.serverHeartbeatTimeout.components.seconds * 1000)
        + pdConfiguration.serverHeartbeatTimeout.components.attoseconds / 1_000_000_000_000_000),
    snapshotEvery: pdConfiguration.snapshotEvery)
let members = Dictionary(uniqueKeysWithValues: pdConfiguration.members.map { ($0.id, $0) })
let placementDriverAddresses = serverConfiguration.placementDriver.isEmpty
    ? pdConfiguration.members.map(\.description) : serverConfiguration.placementDriver

do {
    try await reactor.run(on: 0) { context in
        let member = try await PDMember.start(settings, on: context)
        let server = try PDServer.start(member: member, members: members, on: context,
                                         limits: pdConfiguration.connectionLimits)
        let rangeServer: RangeServer
        do {
            rangeServer = try await RangeServer.start(serverConfiguration, placementDriver: placementDriverAddresses,
                                                      reactor: reactor, on: context)
        } catch {
            await server.stop()
            await member.stop()
            throw error
        }
        logger.info("elastic-stream started", metadata: [
            "member": "\(settings.id)", "listen": "\(own)", "peer-listen": "\(own.peerAddress)", "members": "\(pdConfiguration.members.map { "\($0.id)=\($0)" })",
            "data": "\(settings.directory)", "shards": "\(reactor.shardCount)",
            "range-server": "\(rangeServer.shardAddresses)", "range-server-data": "\(serverConfiguration.dataDirectory)",
        ])
        // Print the line test harnesses wait for: the placement driver's address, then each shard's.
        FileHandle.standardOutput.write(Data("READY \(own) \(rangeServer.shardAddresses.joined(separator: " "))\n".utf8))
        while !stop.requested { try await context.sleep(for: .milliseconds(20)) }
        await rangeServer.stop()
        await server.stop()
        await member.stop()
    }
} catch {
    logger.critical("the server failed", metadata: ["error": "\(error)"])
    reactor.shutdown()
    exit(1)
}
reactor.shutdown()
logger.info("elastic-stream stopped")
exit(0)
