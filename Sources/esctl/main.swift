// esctl: the command-line tool of an Elastic Stream cluster. Every command talks to the placement driver (and, for
// records, to the range servers) from a one-shard reactor, prints plain text or, with --json, one JSON document
// (one per line for records), and exits 0 on success, 1 with a clear message on stderr otherwise.
import ArgumentParser
import Client
import Foundation
import Logging
import PlacementDriverClient
import Reactor
import Records
import Wire

struct Global: ParsableArguments {
    @Option(name: .long, help: "Placement driver members, comma-separated host:port.")
    var pd = "127.0.0.1:2380"
    @Flag(name: .long, help: "Print JSON instead of text.")
    var json = false
    @Option(name: .long, help: "Seconds a command may keep retrying the placement driver (or placing a range).")
    var timeout = 10.0
    @Flag(name: .long, help: "Log what the client does (failovers, seals) to stderr.")
    var verbose = false

    var addresses: [String] { pd.split(separator: ",").map { String($0.trimmingCharacters(in: .whitespaces)) } }
}

/// Runs `body` with a client on a one-shard reactor; a `ClientError` becomes a clear message and exit status 1.
func withClient(_ global: Global, _ body: @escaping @Sendable (ShardBound<ElasticStreamClient>) async throws -> Void) async throws {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = global.verbose ? .info : .error
        return handler
    }
    let reactor = try Reactor(configuration: ReactorConfiguration(
        cpus: [0], pinThreads: false, pollDuration: .microseconds(20), stallThreshold: nil, bufferCount: 4,
        bufferSizeBytes: 65536, useHugePages: false, drainTimeout: .milliseconds(500)))
    let addresses = global.addresses
    let timeout = global.timeout
    let failure: String? = try await reactor.run(on: 0) { context in
        var configuration = ClientConfiguration()
        configuration.placementDriverTimeout = .milliseconds(Int64(timeout * 1000))
        // A writer gives up placing a range (too few servers, no leader) within the same time.
        configuration.failoverTimeout = .milliseconds(Int64(timeout * 1000))
        let client = ElasticStreamClient(pd: addresses, on: context, configuration: configuration)
        let box = ShardBound(client)
        var failure: String?
        do {
            try await body(box)
        } catch let error as ClientError {
            failure = "\(error)"
        } catch {
            failure = "\(error)"
        }
        await client.close()
        return failure
    }
    reactor.shutdown()
    if let failure {
        FileHandle.standardError.write(Data("esctl: \(failure)\n".utf8))
        throw ExitCode(1)
    }
}

/// Written at once (not buffered): `tail` is often piped and interrupted.
func printJSON(_ value: Any) {
    if let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]) {
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
}

func describe(_ stream: StreamRecord) -> [String: Any] {
    ["stream_id": stream.streamID, "replicas": stream.replicaCount, "ack_count": stream.ackCount,
     "epoch": stream.epoch, "start_offset": stream.startOffset, "deleted": stream.deleted,
     "retention_ms": stream.retentionMs]
}

func describe(_ range: RangeRecord) -> [String: Any] {
    var entry: [String: Any] = ["stream_id": range.streamID, "index": range.index, "start_offset": range.startOffset,
                                "sealed": range.sealed, "servers": range.servers.map(\.serverID)]
    if range.sealed { entry["end_offset"] = range.endOffset }
    return entry
}

func describe(_ record: ReadRecord) -> [String: Any] {
    var entry: [String: Any] = ["offset": record.offset, "timestamp": record.record.timestamp]
    if let text = String(validating: record.record.value, as: UTF8.self) {
        entry["value"] = text
    } else {
        entry["value_base64"] = Data(record.record.value).base64EncodedString()
    }
    if !record.record.headers.isEmpty {
        entry["headers"] = Dictionary(record.record.headers.map {
            (String(decoding: $0.key, as: UTF8.self), String(decoding: $0.value, as: UTF8.self))
        }, uniquingKeysWith: { a, _ in a })
    }
    return entry
}

func show(_ record: ReadRecord, json: Bool) {
    if json {
        printJSON(describe(record))
    } else {
        let text = String(validating: record.record.value, as: UTF8.self)
            ?? "<\(record.record.value.count) bytes: base64 \(Data(record.record.value).base64EncodedString())>"
        FileHandle.standardOutput.write(Data("\(record.offset)\t\(text)\n".utf8))
    }
}

@main
struct ESCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "esctl",
        abstract: "Operate an Elastic Stream cluster: status, streams, ranges, records.",
        subcommands: [Cluster.self, StreamCommand.self, RangeCommand.self, Append.self, Read.self, Tail.self])
}

struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster", abstract: "The cluster.",
                                                    subcommands: [Status.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Placement driver members and leader; range servers and their state.")
        @OptionGroup var global: Global

        func run() async throws {
            let json = global.json
            try await withClient(global) { box in
                let cluster = try await box.value.describeCluster()
                if json {
                    printJSON([
                        "leader_id": cluster.leaderID,
                        "members": cluster.members.map { ["id": $0.memberID, "address": $0.address, "leader": $0.leader] },
                        "range_servers": cluster.servers.map {
                            ["id": $0.serverID, "state": "\($0.state)", "shards": $0.shardAddresses,
                             "ranges": $0.load.ranges, "append_bytes_per_second": $0.load.appendBytesPerSecond,
                             "last_heartbeat_ms": $0.lastHeartbeatMs] as [String: Any]
                        },
                    ])
                } else {
                    print("placement driver (leader: \(cluster.leaderID == 0 ? "none" : "\(cluster.leaderID)"))")
                    for member in cluster.members {
                        print("  member \(member.memberID)  \(member.address)\(member.leader ? "  leader" : "")")
                    }
                    print("range servers: \(cluster.servers.count)")
                    for server in cluster.servers {
                        let state = server.state == .serverOnline ? "online"
                            : server.state == .serverDraining ? "draining" : "offline"
                        print("  server \(server.serverID)  \(state)  ranges \(server.load.ranges)  "
                              + "\(server.shardAddresses.joined(separator: ","))")
                    }
                }
            }
        }
    }
}

struct StreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stream", abstract: "Streams.",
                                                    subcommands: [Create.self, Describe.self, List.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a stream; prints its id.")
        @OptionGroup var global: Global
        @Option(help: "Replicas of each range.") var replicas = 3
        @Option(help: "Replicas that confirm each append (default: a majority).") var ack: Int?

        func run() async throws {
            let json = global.json
            let replicas = replicas
            let ack = ack ?? replicas / 2 + 1
            try await withClient(global) { box in
                let stream = try await box.value.createStream(replicas: replicas, ackCount: ack)
                if json { printJSON(describe(stream)) } else { print(stream.streamID) }
            }
        }
    }

    struct Describe: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Describe a stream.")
        @OptionGroup var global: Global
        @Argument(help: "Stream id.") var id: UInt64

        func run() async throws {
            let json = global.json
            let id = id
            try await withClient(global) { box in
                let stream = try await box.value.describeStream(id)
                let ranges = try await box.value.ranges(of: id)
                if json {
                    var entry = describe(stream)
                    entry["ranges"] = ranges.map(describe)
                    printJSON(entry)
                } else {
                    print("stream \(stream.streamID)\(stream.deleted ? " (deleted)" : "")  replicas \(stream.replicaCount)  "
                          + "ack \(stream.ackCount)  epoch \(stream.epoch)  start \(stream.startOffset)  ranges \(ranges.count)")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every stream.")
        @OptionGroup var global: Global

        func run() async throws {
            let json = global.json
            try await withClient(global) { box in
                let streams = try await box.value.listStreams()
                if json {
                    printJSON(streams.map(describe))
                } else {
                    for stream in streams {
                        print("\(stream.streamID)\(stream.deleted ? "  deleted" : "")  replicas \(stream.replicaCount)  "
                              + "ack \(stream.ackCount)  epoch \(stream.epoch)")
                    }
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a stream (its writer is fenced).")
        @OptionGroup var global: Global
        @Argument(help: "Stream id.") var id: UInt64

        func run() async throws {
            let json = global.json
            let id = id
            try await withClient(global) { box in
                try await box.value.deleteStream(id)
                if json { printJSON(["stream_id": id, "deleted": true]) } else { print("deleted stream \(id)") }
            }
        }
    }
}

struct RangeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "range", abstract: "Ranges.",
                                                    subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the ranges of a stream.")
        @OptionGroup var global: Global
        @Argument(help: "Stream id.") var stream: UInt64

        func run() async throws {
            let json = global.json
            let id = stream
            try await withClient(global) { box in
                let ranges = try await box.value.ranges(of: id)
                if json {
                    printJSON(ranges.map(describe))
                } else {
                    for range in ranges {
                        let end = range.sealed ? "\(range.endOffset)" : "open"
                        print("range \(range.index)  [\(range.startOffset), \(end))  servers "
                              + "\(range.servers.map { String($0.serverID) }.joined(separator: ","))")
                    }
                }
            }
        }
    }
}

struct Append: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Append records to a stream: one record per line of stdin (or of --file).")
    @OptionGroup var global: Global
    @Argument(help: "Stream id.") var stream: UInt64
    @Option(help: "Read the lines from this file instead of stdin.") var file: String?
    @Option(help: "Records per append (one batch).") var batch = 1

    func run() async throws {
        let data: Data
        if let file {
            guard let contents = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read \(file)")
            }
            data = contents
        } else {
            data = FileHandle.standardInput.readDataToEndOfFile()
        }
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
        var lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .map(String.init)
        if lines.last == "" { lines.removeLast() }
        let input = lines
        let json = global.json
        let id = stream
        let size = batch
        try await withClient(global) { box in
            let writer = try await box.value.openStream(id)
            var first: UInt64?
            var count = 0
            var index = 0
            while index < input.count {
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                let chunk = input[index..<min(index + size, input.count)].map {
                    Record(timestamp: now, value: Array($0.utf8))
                }
                let offset = try await writer.append(chunk)
                if first == nil { first = offset }
                count += chunk.count
                index += size
            }
            await writer.close()
            if json {
                printJSON(["stream_id": id, "records": count, "first_offset": first ?? writer.nextOffset,
                           "next_offset": writer.nextOffset])
            } else if let first {
                print("appended \(count) records at offsets \(first)..<\(writer.nextOffset)")
            } else {
                print("nothing to append")
            }
        }
    }
}

struct Read: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print records of a stream: offset, tab, value.")
    @OptionGroup var global: Global
    @Argument(help: "Stream id.") var stream: UInt64
    @Option(help: "First offset.") var from: UInt64 = 0
    @Option(help: "Stop after this many records (default: to the end).") var count: Int?

    func run() async throws {
        let json = global.json
        let id = stream
        let start = from
        let limit = count ?? .max
        try await withClient(global) { box in
            var next = start
            var printed = 0
            while printed < limit {
                let records = try await box.value.read(stream: id, from: next)
                if records.isEmpty { break }
                for record in records where printed < limit {
                    show(record, json: json)
                    printed += 1
                }
                next = records.last!.offset + 1
            }
        }
    }
}

struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a stream: print its records as they arrive (until --count, or interrupted).")
    @OptionGroup var global: Global
    @Argument(help: "Stream id.") var stream: UInt64
    @Option(help: "First offset.") var from: UInt64 = 0
    @Option(help: "Stop after this many records.") var count: Int?

    func run() async throws {
        let json = global.json
        let id = stream
        let start = from
        let limit = count ?? .max
        try await withClient(global) { box in
            var printed = 0
            for try await record in box.value.tail(stream: id, from: start) {
                show(record, json: json)
                printed += 1
                if printed >= limit { break }
            }
        }
    }
}
