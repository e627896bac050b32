/// Reading a `ReactorConfiguration` from the `[reactor]` table of a configuration file in `Config/`.
///
/// The files use a small subset of TOML: `[table]` headers, `key = value` lines, `#` comments; values are integers,
/// booleans, quoted strings and arrays of integers. Durations are strings with a unit: "200us", "2ms", "5s".
/// Unknown keys in `[reactor]` are errors (a misspelt bound must not silently fall back to its default); other tables
/// are left to their own readers.
extension ReactorConfiguration {
    public init(configurationText text: String, file: String = "<text>") throws(ReactorError) {
        self.init()
        var table = ""
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = Self.stripComment(String(rawLine)).trimmingWhitespace()
            if line.isEmpty { continue }
            let place = "\(file):\(number + 1)"
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw .invalidConfiguration("\(place): unterminated table header") }
                table = String(line.dropFirst().dropLast()).trimmingWhitespace()
                continue
            }
            guard table == "reactor" else { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw .invalidConfiguration("\(place): expected key = value")
            }
            let key = String(line[..<equals]).trimmingWhitespace()
            let value = ConfigValue(String(line[line.index(after: equals)...]).trimmingWhitespace())
            try apply(key: key, value: value, at: place)
        }
        try validate()
    }

    private mutating func apply(key: String, value: ConfigValue, at place: String) throws(ReactorError) {
        switch key {
        case "cpus":
            if value.text == "\"all\"" { cpus = nil } else { cpus = try value.integers(key, place) }
        case "pin_threads": pinThreads = try value.bool(key, place)
        case "ring_entries": ringEntries = UInt32(try value.integer(key, place, in: 1...32768))
        case "max_in_flight_per_shard": maxInFlightPerShard = try value.integer(key, place, in: 1...(1 << 20))
        case "channel_capacity": channelCapacity = try value.integer(key, place, in: 2...(1 << 24))
        case "channel_drain_batch": channelDrainBatch = try value.integer(key, place, in: 1...(1 << 20))
        case "job_batch": jobBatch = try value.integer(key, place, in: 1...(1 << 20))
        case "poll_duration": pollDuration = try value.duration(key, place)
        case "stall_threshold":
            stallThreshold = value.text == "\"off\"" ? nil : try value.duration(key, place)
        case "buffer_count": bufferCount = try value.integer(key, place, in: 0...(1 << 16))
        case "buffer_size_bytes": bufferSizeBytes = try value.integer(key, place, in: 4096...(1 << 30))
        case "use_huge_pages": useHugePages = try value.bool(key, place)
        case "drain_timeout": drainTimeout = try value.duration(key, place)
        default: throw .invalidConfiguration("\(place): unknown key '\(key)' in [reactor]")
        }
    }

    private static func stripComment(_ line: String) -> String {
        var inString = false
        for (offset, character) in line.enumerated() {
            if character == "\"" { inString.toggle() }
            if character == "#" && !inString { return String(line.prefix(offset)) }
        }
        return line
    }
}

/// One value on the right of `=`.
struct ConfigValue {
    let text: String
    init(_ text: String) { self.text = text }

    func integer(_ key: String, _ place: String, in range: ClosedRange<Int>) throws(ReactorError) -> Int {
        guard let value = Int(text.replacingUnderscores()), range.contains(value) else {
            throw .invalidConfiguration("\(place): \(key) must be an integer in \(range), not \(text)")
        }
        return value
    }

    func bool(_ key: String, _ place: String) throws(ReactorError) -> Bool {
        switch text {
        case "true": return true
        case "false": return false
        default: throw .invalidConfiguration("\(place): \(key) must be true or false, not \(text)")
        }
    }

    func integers(_ key: String, _ place: String) throws(ReactorError) -> [Int] {
        guard text.hasPrefix("["), text.hasSuffix("]") else {
            throw .invalidConfiguration("\(place): \(key) must be an array of integers or \"all\", not \(text)")
        }
        let inner = text.dropFirst().dropLast().split(separator: ",").map { String($0).trimmingWhitespace() }
        var values: [Int] = []
        for item in inner where !item.isEmpty {
            guard let value = Int(item), value >= 0 else {
                throw .invalidConfiguration("\(place): \(key) holds '\(item)', not a CPU number")
            }
            values.append(value)
        }
        return values
    }

    /// "250us", "2ms", "1s", "500ns".
    func duration(_ key: String, _ place: String) throws(ReactorError) -> Duration {
        guard text.count >= 2, text.hasPrefix("\""), text.hasSuffix("\"") else {
            throw .invalidConfiguration("\(place): \(key) must be a quoted duration such as \"2ms\", not \(text)")
        }
        let body = String(text.dropFirst().dropLast())
        for (suffix, make) in [("ns", Duration.nanoseconds), ("us", Duration.microseconds),
                               ("ms", Duration.milliseconds), ("s", Duration.seconds)] as [(String, (Int) -> Duration)]
        where body.hasSuffix(suffix) {
            if let number = Int(body.dropLast(suffix.count)), number >= 0 { return make(number) }
            break
        }
        throw .invalidConfiguration("\(place): \(key) must be a duration such as \"2ms\", not \(text)")
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" || first == "\r" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" || last == "\r" { slice.removeLast() }
        return String(slice)
    }

    func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}
