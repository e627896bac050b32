// libFuzzer target for the frame decoder: arbitrary bytes, in arbitrary splits, must give frames that re-encode to
// exactly their bytes, or a typed error, and never a crash or a read out of bounds (ASan checks that).
//
// Built with -sanitize=fuzzer,address -D FUZZING by Tests/Fuzz/run.sh. Without FUZZING it builds a replayer:
// `fuzz-frame-decoder FILE...` runs the target on each file; `--write-seeds DIR` writes the seed corpus.
import Foundation
import SwiftProtobuf
import Wire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard size > 0 else { return 0 }
    // The first byte picks the split size, so the fuzzer explores chunking too.
    let chunk = Int(input[0]) % 37 + 1
    let stream = UnsafeRawBufferPointer(rebasing: input[1...])
    var decoder = FrameDecoder(limits: FrameLimits(maxFrameBytes: 1 << 16, maxHeaderBytes: 1 << 12))
    var frames: [Frame] = []
    var position = 0
    do {
        while position < stream.count {
            let end = min(stream.count, position + chunk)
            try decoder.decode(UnsafeRawBufferPointer(rebasing: stream[position..<end])) { frames.append($0) }
            position = end
        }
    } catch {
        _ = error.description
    }
    // Every frame decoded re-encodes to the bytes it came from.
    var offset = 0
    for frame in frames {
        guard let bytes = try? frame.encoded(limits: FrameLimits(maxFrameBytes: 1 << 16, maxHeaderBytes: 1 << 12))
        else { fatalError("a decoded frame does not encode") }
        guard bytes.elementsEqual(stream[offset..<(offset + bytes.count)]) else {
            fatalError("a decoded frame re-encodes differently")
        }
        offset += bytes.count
        // Headers of every kind must decode or fail cleanly.
        _ = try? frame.header(as: Elasticstream_V1_AppendRequest.self)
        _ = try? frame.header(as: Elasticstream_V1_FetchResponse.self)
        _ = try? frame.header(as: Elasticstream_V1_WatchResponse.self)
        _ = try? frame.header(as: Elasticstream_V1_AppendEntriesRequest.self)
        _ = try? frame.header(as: Elasticstream_V1_Status.self)
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

@_cdecl("fuzz_frame_decoder_main")
func fuzzerMain(
    _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, { data, size in fuzzFrameDecoder(data, size) })
}
#else
@main
struct FrameDecoderReplay {
    static func main() throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-seeds", arguments.count == 2 {
            try writeSeeds(to: arguments[1])
            return
        }
        for path in arguments {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            _ = bytes.withUnsafeBufferPointer { fuzzFrameDecoder($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
        }
        print("replayed \(arguments.count) inputs")
    }

    static func writeSeeds(to directory: String) throws {
        var append = Elasticstream_V1_AppendRequest()
        append.streamID = 1
        append.rangeIndex = 0
        append.epoch = 3
        var status = Elasticstream_V1_Status()
        status.code = .notLeader
        status.leaderAddress = "127.0.0.1:2379"
        let ping = try Frame(request: .ping, id: 1, header: Elasticstream_V1_PingRequest())
        let seeds: [(String, [UInt8])] = [
            ("ping", [1] + (try ping.encoded())),
            ("append", [5] + (try Frame(request: .append, id: 2, header: append, payload: Array(repeating: 7, count: 100)).encoded())),
            ("error", [3] + (try Frame(errorTo: ping, status: status).encoded())),
            ("two-frames", [0] + (try ping.encoded()) + (try ping.encoded())),
        ]
        for (name, bytes) in seeds {
            try Data(bytes).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
        }
        print("wrote \(seeds.count) seeds to \(directory)")
    }
}
#endif
