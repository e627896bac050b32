import Foundation
import PlacementDriver
import Store
import TOMLKit
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

    public typealias Invalid = PDConfiguration.Invalid

    public init(configurationText text: String, file: String = "<text>") throws(Invalid) {
        self.init()
        let document: TOMLTable
        do {
            document = try TOMLTable(string: text)
        } catch {
            throw Invalid(description: "\(file): \(error)")
        }
        guard let value = document["server"] else { return }
        guard let table = value.table else { throw Invalid(description: "\(file): [server] must be a table") }
        for key in table.keys.sorted() {
            let value = table[key]!
            let place = "\(file): [server] \(key)"
            switch key {
            case "host": host = try PDConfiguration.string(value, place)
            case "port": port = UInt16(try PDConfiguration.integer(value, place, in: 1...65_000))
            case "data_dir": dataDirectory = try PDConfiguration.string(value, place)
            case "pd":
                guard let array = value.array else {
                    throw Invalid(description: "\(place) must be an array of \"host:port\" strings")
                }
                var addresses: [String] = []
                for item in array {
                    let address = try PDConfiguration.string(item, place)
                    let parts = address.split(separator: ":")
                    guard parts.count == 2, UInt16(parts[1]) != nil else {
                        throw Invalid(description: "\(place) holds '\(address)', not \"host:port\"")
                    }
                    addresses.append(address)
                }
                placementDriver = addresses
            case "heartbeat_interval": heartbeatInterval = try PDConfiguration.duration(value, place)
            case "reconcile_interval": reconcileInterval = try PDConfiguration.duration(value, place)
            case "writer_lease": writerLease = try PDConfiguration.duration(value, place)
            case "segment_bytes": segmentBytes = try PDConfiguration.integer(value, place, in: (2 << 20)...(1 << 34))
            case "cache_bytes": cacheBytes = try PDConfiguration.integer(value, place, in: 0...(1 << 36))
            case "wal_durability":
                let text = try PDConfiguration.string(value, place)
                guard let durability = WALConfiguration.Durability(rawValue: text) else {
                    throw Invalid(description: "\(place) must be \"fdatasync\" or \"dsync-write\", not \"\(text)\"")
                }
                walDurability = durability
            case "wal_max_flush_bytes":
                walMaxFlushBytes = try PDConfiguration.integer(value, place, in: (1 << 20)...(64 << 20))
                guard walMaxFlushBytes % 4096 == 0 else {
                    throw Invalid(description: "\(place) must be a multiple of 4096")
                }
            case "checkpoint_interval_bytes":
                checkpointIntervalBytes = try PDConfiguration.integer(value, place, in: 0...(1 << 40))
            case _ where try PDConfiguration.connectionKey(key, value, place, into: &connectionLimits): break
            case "max_frame_bytes": maxFrameBytes = try PDConfiguration.integer(value, place, in: (2 << 20)...(1 << 30))
            case "drain_timeout": drainTimeout = try PDConfiguration.duration(value, place)
            case "max_fetch_wait": maxFetchWait = try PDConfiguration.duration(value, place)
            default: throw Invalid(description: "\(file): unknown key '\(key)' in [server]")
            }
        }
        guard segmentBytes % 4096 == 0 else { throw Invalid(description: "\(file): [server] segment_bytes must be a multiple of 4096") }
    }

    /// The address of shard `index`.
    public func shardAddress(_ index: Int) -> String { "\(host):\(Int(port) + index)" }

    func store(shard index: Int) -> StoreConfiguration {
        StoreConfiguration(wal: WALConfiguration(directory: "\(dataDirectory)/shard-\(index)", segmentSizeBytes: segmentBytes,
                                                 maxFlushBytes: walMaxFlushBytes, durability: walDurability),
                           cacheBytes: cacheBytes, checkpointIntervalBytes: checkpointIntervalBytes)
    }
}
