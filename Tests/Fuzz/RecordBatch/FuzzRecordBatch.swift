// libFuzzer target for the record batch reader: arbitrary bytes must validate into batches whose every record can be
// walked and which re-encode to exactly their bytes, or give a typed error; never a crash or a read out of bounds.
//
// Built with -sanitize=fuzzer,address -D FUZZING by Tests/Fuzz/run.sh. Without FUZZING it builds a replayer:
// `fuzz-record-batch FILE...` runs the target on each file; `--write-seeds DIR` writes the seed corpus.
import Foundation
import Records

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRecordBatch(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let limits = RecordLimits(maxBatchBytes: 1 << 20, maxRecordsPerBatch: 1024)
    var iterator = RecordBatchSequence(input, limits: limits).makeIterator()
    var position = 0
    while let next = iterator.next() {
        switch next {
        case .success(let view):
            var sum = 0
            for record in view.records {
                for header in record.headers { sum &+= Int(header.key.last ?? 0) &+ Int(header.value.last ?? 0) }
                for property in record.properties { sum &+= Int(property.key.first ?? 0) }
                sum &+= Int(record.value.last ?? 0) &+ Int(record.offset & 1)
            }
            let owned = RecordBatch(view)
            guard let again = try? owned.encoded(limits: limits), again.elementsEqual(view.bytes) else {
                fatalError("a valid batch does not re-encode to its bytes")
            }
            precondition(view.bytes.baseAddress == input.baseAddress! + position)
            position += view.bytes.count
            _ = sum
        case .failure(let error):
            _ = error.description
        }
    }
    return 0
}

#if FUZZING
// SwiftPM links an executable with `main` renamed to `<target>_main`; that is where libFuzzer's driver starts.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
) -> Int32

@_cdecl("fuzz_record_batch_main")
func fuzzerMain(
    _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, { data, size in fuzzRecordBatch(data, size) })
}
#else
@main
struct RecordBatchReplay {
    static func main() throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-seeds", arguments.count == 2 {
            try writeSeeds(to: arguments[1])
            return
        }
        for path in arguments {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            _ = bytes.withUnsafeBufferPointer { fuzzRecordBatch($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
        }
        print("replayed \(arguments.count) inputs")
    }

    static func writeSeeds(to directory: String) throws {
        let simple = RecordBatch(streamID: 1, rangeIndex: 0, baseOffset: 0, baseTimestamp: 1_700_000_000_000,
                                 records: [Record(timestamp: 1_700_000_000_000, value: Array("hello".utf8))])
        let rich = RecordBatch(
            streamID: 9, rangeIndex: 2, baseOffset: 100, baseTimestamp: 5, properties: [Header("producer", "p")],
            records: (0..<5).map { i in
                Record(timestamp: 5 + Int64(i), headers: [Header("k\(i)", "v")], properties: [Header("tx", "\(i)")],
                       value: Array(repeating: UInt8(i), count: i * 10))
            })
        let seeds: [(String, [UInt8])] = [
            ("simple", try simple.encoded()),
            ("rich", try rich.encoded()),
            ("two-batches", try simple.encoded() + rich.encoded()),
            ("empty-batch", try RecordBatch(streamID: 0, rangeIndex: 0, baseOffset: 0, baseTimestamp: 0, records: []).encoded()),
        ]
        for (name, bytes) in seeds {
            try Data(bytes).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
        }
        print("wrote \(seeds.count) seeds to \(directory)")
    }
}
#endif
