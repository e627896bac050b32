import Foundation
import Configuration
import Store
import Transport

/// The `[server]` table of a configuration file: where the range server listens, keeps its data, and how it bounds
/// each connection. Unknown keys and bad values are errors naming the file, the key and the problem.
public struct RangeServerConfiguration: Sendable, Hashable {
    /// The address clients reach this server on (listened on and registered with the placement driver).
    public var host = "127.0.0.1"
    /// Shard i listens on `port + i`.
    public var port: UInt16 = 10911
    /// Each shard keeps its store under `data_dir/shard-<i>`; the server's id is kept in `data_dir/server-id`.
    public var dataDirectory = "/var/tmp/elastic-stream/standalone/server"
    /// Placement driver members ("host:port"); empty: the `[pd]` table's members.
    public var placementDriver: [String] = []
    public var heartbeatInterval: Duration = .seconds(1)
    /// How often the server compares its replicas with the placement driver's ranges (and once after it registers):
    /// seals it missed are applied, and replicas of deleted or trimmed ranges are removed.
    public var reconcileInterval: Duration = .seconds(30)
    /// An open range whose writer this server has not heard from for this long (writers send an APPEND at least
    /// every second, records or not) is sealed by the server, once every replica that answers agrees the writer is
    /// silent: readers of a stream nobody writes to then see every acknowledged record.
    public var writerLease: Duration = .seconds(10)
    public var segmentBytes = 64 << 20
    public var cacheBytes = 64 << 20
    public var checkpointIntervalBytes = 64 << 20
    /// How a WAL flush is made durable: "dsync-write" (one write with RWF_DSYNC, the default: no hop through the
    /// kernel's io-wq threads, which cost most when several processes share few cores) or "fdatasync" (a write, then
    /// an fdatasync).
    public var walDurability: WALConfiguration.Durability = .dsyncWrite
    /// The largest single WAL write: appends waiting together beyond it go out in the next flush.
    public var walMaxFlushBytes = 1 << 20
    /// Bounds and timeouts of client connections, per shard: `max_connections`, `max_buffered_bytes`,
    /// `max_requests_per_connection`, `max_bytes_per_connection`, `idle_timeout`, `frame_timeout`.
    public var connectionLimits = ConnectionLimits()
    public var maxRequestsPerConnection: Int {
        get { connectionLimits.maxRequestsPerConnection }
        set { connectionLimits.maxRequestsPerConnection = newValue }
    }
    /// Largest frame accepted.
    public var maxFrameBytes = 16 << 20
    /// How long SIGTERM waits for requests in flight before closing connections.
    public var drainTimeout: Duration = .seconds(5)
    /// The longest a FETCH may wait for new records.
    public var maxFetchWait: Duration = .seconds(30)

    public init() {}

    public typealias Invalid = ConfigurationError

    /// The `[server]` table of a configuration file (`ConfigurationFile`); the defaults without one.
    public init(configurationText text: String, file: String = "<text>") throws(Invalid) {
        self.init()
        guard let table = try ConfigurationFile(text: text, file: file).table("server") else { return }
        for key in table.keys {
            switch key {
            case "host": host = try table.string(key)
            case "port": port = UInt16(try table.integer(key, in: 1...65_000))
            case "data_dir": dataDirectory = try table.string(key)
            case "pd":
                let addresses = try table.strings(key)
                for address in addresses {
                    let parts = address.split(separator: ":")
                    guard parts.count == 2, UInt16(parts[1]) != nil else {
                        throw table.error(key, "holds '\(address)', not \"host:port\"")
                    }
                }
                placementDriver = addresses
            case "heartbeat_interval": heartbeatInterval = try table.duration(key)
            case "reconcile_interval": reconcileInterval = try table.duration(key)
            case "writer_lease": writerLease = try table.duration(key)
            case "segment_bytes": segmentBytes = try table.integer(key, in: (2 << 20)...(1 << 34))
            case "cache_bytes": cacheBytes = try table.integer(key, in: 0...(1 << 36))
            case "wal_durability":
                let text = try table.string(key)
                guard let durability = WALConfiguration.Durability(rawValue: text) else {
                    throw table.error(key, "must be \"fdatasync\" or \"dsync-write\", not \"\(text)\"")
                }
                walDurability = durability
            case "wal_max_flush_bytes":
                walMaxFlushBytes = try table.integer(key, in: (1 << 20)...(64 << 20))
                guard walMaxFlushBytes % 4096 == 0 else { throw table.error(key, "must be a multiple of 4096") }
            case "checkpoint_interval_bytes": checkpointIntervalBytes = try table.integer(key, in: 0...(1 << 40))
            case _ where try connectionLimits.read(key, from: table): break
            case "max_frame_bytes": maxFrameBytes = try table.integer(key, in: (2 << 20)...(1 << 30))
            case "drain_timeout": drainTimeout = try table.duration(key)
            case "max_fetch_wait": maxFetchWait = try table.duration(key)
            default: throw table.unknown(key)
            }
        }
        guard segmentBytes % 4096 == 0 else { throw table.error("segment_bytes", "must be a multiple of 4096") }
    }

    /// The address of shard `index`.
    public func shardAddress(_ index: Int) -> String { "\(host):\(Int(port) + index)" }

    func store(shard index: Int) -> StoreConfiguration {
        StoreConfiguration(wal: WALConfiguration(directory: "\(dataDirectory)/shard-\(index)", segmentSizeBytes: segmentBytes,
                                                 maxFlushBytes: walMaxFlushBytes, durability: walDurability),
                           cacheBytes: cacheBytes, checkpointIntervalBytes: checkpointIntervalBytes)
    }
}
