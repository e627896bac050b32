// es-perf: Elastic Stream's benchmarks. Every figure is printed as one JSON line beside a baseline measured in the
// same run, so that a noisy shared machine still gives a true ratio.
//
//   es-perf reactor [--dir PATH] [--quick] [--no-pin] [--only nop|hop|cross|write] [--config FILE]
import Foundation

let arguments = Array(CommandLine.arguments.dropFirst())
let usage = """
    usage: es-perf <suite> [options]
    suites:
      reactor    io_uring NOPs, job hops, cross-shard round trips, 4 KiB O_DIRECT write+fdatasync (needs fio)
      codec      record batch encode/decode, checksum, frame header decode, allocations per decoded batch
      store      WAL appends (QD1, 64 appenders), hot and warm reads, recovery time (needs fio)
      pd         placement driver writes on 3 elastic-stream processes, beside etcd (needs etcd-server and
                 swift build -c release --product elastic-stream)
      cluster    appends through the client SDK to 3 nodes (3 replicas, ack 2) and 1 node (1 replica), 1 KiB and
                 64 KiB records, 1 and 64 streams, beside the store's own QD1 and Redis XADD with appendfsync always
                 (needs redis-server and swift build -c release --product elastic-stream)
    options:
      --dir PATH   where the write benchmark puts its 256 MiB file (default: $TMPDIR or /var/tmp); ext4 or xfs
      --quick      fewer iterations (a smoke run; figures are noisier)
      --no-pin     do not pin shard threads to CPUs
      --only NAME  one group of figures: nop, hop, cross or write (reactor); qd1, throughput, read, recovery or ranges
                   (store: the QD1 figures always run, the others use them); 1k or 64k (cluster)
      --config F   take the reactor's settings from the [reactor] table of F (needs at least two shards)
    """

guard let suite = arguments.first, !suite.hasPrefix("-") else {
    FileHandle.standardError.write(Data((usage + "\n").utf8))
    exit(2)
}

func option(_ name: String) -> String? {
    guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}

let options = PerfOptions(
    directory: option("--dir") ?? ProcessInfo.processInfo.environment["TMPDIR"] ?? "/var/tmp",
    quick: arguments.contains("--quick"),
    pin: !arguments.contains("--no-pin"),
    configFile: option("--config"),
    only: option("--only"))

switch suite {
case "reactor":
    do {
        try await ReactorSuite(options: options).run()
    } catch {
        FileHandle.standardError.write(Data("es-perf reactor: \(error)\n".utf8))
        exit(1)
    }
case "store":
    do {
        try await StoreSuite(options: options).run()
    } catch {
        FileHandle.standardError.write(Data("es-perf store: \(error)\n".utf8))
        exit(1)
    }
case "pd":
    do {
        try await PDSuite(options: options).run()
    } catch {
        FileHandle.standardError.write(Data("es-perf pd: \(error)\n".utf8))
        exit(1)
    }
case "cluster":
    do {
        try await ClusterSuite(options: options).run()
    } catch {
        FileHandle.standardError.write(Data("es-perf cluster: \(error)\n".utf8))
        exit(1)
    }
case "codec":
    do {
        try CodecSuite(options: options).run()
    } catch {
        FileHandle.standardError.write(Data("es-perf codec: \(error)\n".utf8))
        exit(1)
    }
default:
    FileHandle.standardError.write(Data("unknown suite '\(suite)'\n\(usage)\n".utf8))
    exit(2)
}
