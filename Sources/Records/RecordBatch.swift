/// A header or property with its own storage: the convenient form for building batches in tests and clients and
/// for keeping records past the life of the bytes they came from.
public struct Header: Sendable, Hashable {
    public var key: [UInt8]
    public var value: [UInt8]

    public init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
    }

    public init(_ key: String, _ value: String) {
        self.key = Array(key.utf8)
        self.value = Array(value.utf8)
    }
}

/// A record with its own storage.
public struct Record: Sendable, Hashable {
    /// Milliseconds since the Unix epoch.
    public var timestamp: Int64
    public var headers: [Header]
    public var properties: [Header]
    public var value: [UInt8]

    public init(timestamp: Int64, headers: [Header] = [], properties: [Header] = [], value: [UInt8]) {
        self.timestamp = timestamp
        self.headers = headers
        self.properties = properties
        self.value = value
    }
}

/// A whole batch with its own storage: a composite record holding `records.count` single ones (its `length`).
public struct RecordBatch: Sendable, Hashable {
    public var streamID: UInt64
    public var rangeIndex: UInt32
    public var baseOffset: UInt64
    public var baseTimestamp: Int64
    public var properties: [Header]
    public var records: [Record]

    public init(streamID: UInt64, rangeIndex: UInt32, baseOffset: UInt64, baseTimestamp: Int64,
                properties: [Header] = [], records: [Record]) {
        self.streamID = streamID
        self.rangeIndex = rangeIndex
        self.baseOffset = baseOffset
        self.baseTimestamp = baseTimestamp
        self.properties = properties
        self.records = records
    }

    /// Copies a validated batch out of its bytes.
    public init(_ view: RecordBatchView) {
        func owned(_ pairs: RecordPairs) -> [Header] {
            pairs.map { Header(key: Array($0.key), value: Array($0.value)) }
        }
        self.init(streamID: view.streamID, rangeIndex: view.rangeIndex, baseOffset: view.baseOffset,
                  baseTimestamp: view.baseTimestamp, properties: owned(view.properties),
                  records: view.records.map {
                      Record(timestamp: $0.timestamp, headers: owned($0.headers), properties: owned($0.properties),
                             value: Array($0.value))
                  })
    }

    /// Bytes the encoded batch takes.
    public var encodedSize: Int {
        func pairs(_ list: [Header]) -> Int { list.reduce(0) { $0 + BatchLayout.pairFixed + $1.key.count + $1.value.count } }
        return BatchLayout.size + pairs(properties)
            + records.reduce(0) { $0 + BatchLayout.recordFixed + pairs($1.headers) + pairs($1.properties) + $1.value.count }
    }

    /// Encodes the batch.
    public func encoded(limits: RecordLimits = .default) throws(RecordError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: encodedSize)
        let result = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(RecordError) -> Int in try encode(into: buffer, limits: limits) }
        }
        let length = try result.get()
        assert(length == bytes.count)
        return bytes
    }

    /// Encodes the batch into `buffer`; returns its length.
    public func encode(into buffer: UnsafeMutableRawBufferPointer, limits: RecordLimits = .default)
        throws(RecordError) -> Int
    {
        try withPairs(properties) { (batchProperties) throws(RecordError) -> Int in
            var builder = try RecordBatchBuilder(
                into: buffer, streamID: streamID, rangeIndex: rangeIndex, baseOffset: baseOffset,
                baseTimestamp: baseTimestamp, properties: batchProperties, limits: limits)
            for record in records {
                try withPairs(record.headers) { (headers) throws(RecordError) in
                    try withPairs(record.properties) { (properties) throws(RecordError) in
                        try withBytes(record.value) { (value) throws(RecordError) in
                            try builder.append(timestamp: record.timestamp, value: value, headers: headers,
                                               properties: properties)
                        }
                    }
                }
            }
            return builder.finish()
        }
    }
}

/// Calls `body` with raw views of `list`'s keys and values, valid only inside it.
private func withPairs<R>(_ list: [Header], _ body: ([RecordPair]) throws(RecordError) -> R) throws(RecordError) -> R {
    var pairs: [RecordPair] = []
    pairs.reserveCapacity(list.count)
    var index = 0
    func next() throws(RecordError) -> R {
        if index == list.count { return try body(pairs) }
        let header = list[index]
        index += 1
        return try withBytes(header.key) { (key) throws(RecordError) -> R in
            try withBytes(header.value) { (value) throws(RecordError) -> R in
                pairs.append(RecordPair(key: key, value: value))
                return try next()
            }
        }
    }
    return try next()
}

/// `Array.withUnsafeBytes` for a body with a typed error.
private func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(RecordError) -> R)
    throws(RecordError) -> R
{
    try array.withUnsafeBytes { raw in Result { () throws(RecordError) -> R in try body(raw) } }.get()
}
