// The child process of the store's crash tests (Tests/StoreTests/CrashTests.swift): opens a store in the directory
// given, appends batches to four ranges with several appends in flight per range, and prints `ACK <stream> <end>`
// for every append acknowledged as durable, until it is killed. It trims each range now and then (printing
// `TRIM <stream> <offset>` first), so that checkpoints and segment reuse happen under the kills. Batch contents are a
// function of their offsets, so the parent can check every byte after recovery.
import Foundation
import Reactor
import Records
import Store

/// The value of the record at `offset`.
func crashTestValue(_ offset: UInt64) -> [UInt8] {
    let text = Array("record \(offset);".utf8)
    return Array((0..<(Int(offset % 97) + 1)).map { text[$0 % text.count] })
}

func crashTestBatch(_ key: RangeKey, _ offset: UInt64, count: Int) throws -> [UInt8] {
    try RecordBatch(
        streamID: key.streamID, rangeIndex: key.index, baseOffset: offset, baseTimestamp: Int64(offset),
        records: (0..<count).map { i in
            Record(timestamp: Int64(offset) + Int64(i), value: crashTestValue(offset + UInt64(i)))
        }
    ).encoded()
}

/// The ranges the child writes, one stream each.
let crashTestRanges = (42..<46).map { RangeKey(streamID: UInt64($0), index: 0) }

/// Small segments and frequent checkpoints, so that a run goes through many of both.
func crashTestConfiguration(_ directory: String) -> StoreConfiguration {
    StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 256 << 10,
                                             maxFlushBytes: 32 << 10, maxSpareSegments: 2),
                       checkpointIntervalBytes: 384 << 10)
}

func say(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
}

@main
struct StoreCrashChild {
    static func main() async throws {
        guard CommandLine.arguments.count == 2 || (CommandLine.arguments.count == 3 && CommandLine.arguments[2] == "many")
        else {
            FileHandle.standardError.write(Data("usage: store-crash-child DIRECTORY [many]\n".utf8))
            exit(2)
        }
        let directory = CommandLine.arguments[1]
        let reactor = try Reactor(configuration: .testing(shards: 1))
        if CommandLine.arguments.count == 3 {
            _ = try await reactor.run(on: 0) { context -> Int in
                let store = ShardBound(try await ShardStore.open(manyRangesConfiguration(directory), on: context))
                say("START")
                try await createRangesForever(store)
                return 0
            }
        }
        _ = try await reactor.run(on: 0) { context -> Int in
            let store = ShardBound(try await ShardStore.open(crashTestConfiguration(directory), on: context))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for key in crashTestRanges {
                    try await store.value.createRange(key, start: 0)
                    group.addTask { try await appendForever(store, key) }
                }
                say("START")
                try await group.waitForAll()
            }
            return 0  // not reached: the child runs until it is killed
        }
    }
}

/// Appends to `key` with eight appends in flight, trimming all but the last 2,000 records every 500 or so.
func appendForever(_ store: ShardBound<ShardStore>, _ key: RangeKey) async throws {
    var next = store.value.describe(key)!.confirmedEnd
    var trimmed = store.value.describe(key)!.start
    try await withThrowingTaskGroup(of: Void.self) { group in
        var inFlight = 0
        while true {
            let count = Int(next % 7) + 1
            let bytes = try crashTestBatch(key, next, count: count)
            next += UInt64(count)
            group.addTask {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
                defer { buffer.deallocate() }
                buffer.copyBytes(from: bytes)
                let view = try RecordBatchView(validating: UnsafeRawBufferPointer(buffer))
                let outcome = try await store.value.append(view)
                if case .committed(let end) = outcome { say("ACK \(key.streamID) \(end)") }
            }
            inFlight += 1
            if inFlight >= 8 {
                try await group.next()
                inFlight -= 1
            }
            let confirmed = store.value.describe(key)!.confirmedEnd
            if confirmed > trimmed + 2_500 {
                trimmed = confirmed - 2_000
                say("TRIM \(key.streamID) \(trimmed)")
                try await store.value.trim(key, below: trimmed)
            }
        }
    }
}

/// The "many" mode: small ranges, as a stream of short writers leaves them. Each has one batch of 1 to 5 records
/// (values a function of the stream and offset); even streams are sealed, odd ones stay open with the writer's
/// acknowledged end recorded (carried by the append). 64 ranges are made at once. For each, once everything about
/// it is durable: `RANGE <stream> <end> <sealed 0|1> <acknowledged end>`.
func manyRangesConfiguration(_ directory: String) -> StoreConfiguration {
    StoreConfiguration(wal: WALConfiguration(directory: directory, segmentSizeBytes: 1 << 20, maxFlushBytes: 64 << 10,
                                             maxSpareSegments: 2),
                       checkpointIntervalBytes: 2 << 20)
}

func manyRangesBatch(_ stream: UInt64) throws -> [UInt8] {
    let key = RangeKey(streamID: stream, index: 0)
    return try crashTestBatch(key, stream * 10, count: Int(stream % 5) + 1)
}

func createRangesForever(_ store: ShardBound<ShardStore>) async throws {
    var next = UInt64(1_000)
    while let key = store.value.rangeKeys.max(by: { $0.streamID < $1.streamID }), key.streamID >= next {
        next = key.streamID + 1
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<64 {
            let stream = next
            next += 1
            group.addTask { try await makeRange(store, stream) }
        }
        while true {
            try await group.next()
            let stream = next
            next += 1
            group.addTask { try await makeRange(store, stream) }
        }
    }
}

func makeRange(_ store: ShardBound<ShardStore>, _ stream: UInt64) async throws {
    let key = RangeKey(streamID: stream, index: 0)
    let start = stream * 10
    try await store.value.createRange(key, start: start)
    let bytes = try manyRangesBatch(stream)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: bytes)
    let view = try RecordBatchView(validating: UnsafeRawBufferPointer(buffer))
    let sealed = stream % 2 == 0
    // The writer's acknowledged end so far: the start (nothing acknowledged before this batch).
    guard case .committed(let end) = try await store.value.append(view, acknowledged: sealed ? 0 : start + 1)
    else { return }
    if sealed {
        _ = try await store.value.seal(key, at: end)
        say("RANGE \(stream) \(end) 1 0")
    } else {
        try await store.value.acknowledge(key, upTo: end)
        say("RANGE \(stream) \(end) 0 \(end)")
    }
}
