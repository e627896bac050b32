import Reactor
import Transport

extension ReactorConfiguration {
    /// The `[reactor]` table of a configuration file (the defaults without one). Unknown keys are errors: a misspelt
    /// bound must not silently fall back to its default.
    public init(configurationText text: String, file: String = "<text>") throws(ConfigurationError) {
        self.init()
        if let table = try ConfigurationFile(text: text, file: file).table("reactor") {
            for key in table.keys {
                switch key {
                case "cpus": cpus = table.isString(key, "all") ? nil : try table.integers(key, in: 0...4_095)
                case "pin_threads": pinThreads = try table.bool(key)
                case "ring_entries": ringEntries = UInt32(try table.integer(key, in: 1...32_768))
                case "max_in_flight_per_shard": maxInFlightPerShard = try table.integer(key, in: 1...(1 << 20))
                case "channel_capacity": channelCapacity = try table.integer(key, in: 2...(1 << 24))
                case "channel_drain_batch": channelDrainBatch = try table.integer(key, in: 1...(1 << 20))
                case "job_batch": jobBatch = try table.integer(key, in: 1...(1 << 20))
                case "poll_duration": pollDuration = try table.duration(key, allowZero: true)
                case "stall_threshold": stallThreshold = table.isString(key, "off") ? nil : try table.duration(key)
                case "buffer_count": bufferCount = try table.integer(key, in: 0...(1 << 16))
                case "buffer_size_bytes": bufferSizeBytes = try table.integer(key, in: 4096...(1 << 30))
                case "use_huge_pages": useHugePages = try table.bool(key)
                case "drain_timeout": drainTimeout = try table.duration(key)
                default: throw table.unknown(key)
                }
            }
        }
        do {
            try validate()
        } catch {
            throw ConfigurationError(description: "\(file): [reactor] \(error)")
        }
    }
}

extension ConnectionLimits {
    /// Reads `key` when it is one of the connection keys shared by [server] and [pd]; false when it is not one.
    public mutating func read(_ key: String, from table: ConfigurationTable) throws(ConfigurationError) -> Bool {
        switch key {
        case "max_connections": maxConnections = try table.integer(key, in: 1...1_000_000)
        case "max_buffered_bytes": maxBufferedBytes = try table.integer(key, in: (1 << 20)...(1 << 40))
        case "max_requests_per_connection": maxRequestsPerConnection = try table.integer(key, in: 1...1_000_000)
        case "max_bytes_per_connection": maxBytesPerConnection = try table.integer(key, in: (1 << 20)...(1 << 34))
        case "idle_timeout": idleTimeout = try table.duration(key)
        case "frame_timeout": frameTimeout = try table.duration(key)
        default: return false
        }
        return true
    }
}
