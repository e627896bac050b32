import CSupport
import Foundation
import Platform
import TestSupport
import Testing
@testable import Reactor

extension Serialized {
@Suite struct IOTests {
    /// The one durable replacement: a failed write leaves the old file whole and no temporary file behind; a good
    /// one replaces it.
    @Test func replaceDurablyKeepsTheOldFileUntilTheNewOneIsWhole() async throws {
        try await withTemporaryDirectory { directory in
            try await withReactor(.testing(shards: 1)) { reactor in
                let path = "\(directory)/state"
                let failed = try await reactor.run(on: 0) { context -> Bool in
                    try await context.writeDurably(Array("old\n".utf8), to: path)
                    do {
                        _ = try await context.replaceDurably(path) { file throws(IOError) in
                            _ = try await file.write(UnsafeRawBufferPointer(start: nil, count: 0), at: 0)
                            throw IOError(.write, .system(errno: 5), target: path)
                        }
                        return false
                    } catch {
                        return true
                    }
                }
                #expect(failed)
                #expect(try String(contentsOfFile: path, encoding: .utf8) == "old\n")
                #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
                try await reactor.run(on: 0) { context in try await context.writeDurably(Array("new\n".utf8), to: path) }
                #expect(try String(contentsOfFile: path, encoding: .utf8) == "new\n")
            }
        }
    }

    @Test func directWriteSyncAndReadBack() async throws {
        try await withTemporaryDirectory { directory in
            try await withReactor { reactor in
                let ok = try await reactor.run(on: 1) { context -> Bool in
                    let file = try await context.open("\(directory)/direct", options: FileOpenOptions(create: true))
                    try await file.allocate(at: 0, length: 1 << 20)
                    let pool = context.buffers
                    let out = try await pool.acquire()
                    for i in 0..<out.count { out.bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
                    // Plain write of the first 4 KiB, fixed-buffer durable write of the next 8 KiB.
                    let n1 = try await file.write(UnsafeRawBufferPointer(start: out.base, count: 4096), at: 0)
                    let n2 = try await file.write(out, length: 8192, at: 4096, durable: true)
                    try await file.sync()
                    let back = try await pool.acquire()
                    memset(back.base, 0, back.count)
                    let r1 = try await file.read(into: back, length: 12288, at: 0)
                    let same = memcmp(out.base, back.base, 12288) == 0
                    // Past the written data, the preallocated space reads as zeros.
                    let r2 = try await file.read(
                        into: UnsafeMutableRawBufferPointer(start: back.base, count: 4096), at: 16384)
                    let zero = UnsafeRawBufferPointer(start: back.base, count: 4096).allSatisfy { $0 == 0 }
                    try await file.close()
                    return n1 == 4096 && n2 == 8192 && r1 == 12288 && same && r2 == 4096 && zero
                }
                #expect(ok)
            }
            // Another process view: the bytes are really in the file.
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/direct"))
            #expect(data.count == 1 << 20)
            #expect(data[4096 + 5] == UInt8(truncatingIfNeeded: (4096 + 5) &* 31 &+ 7))
        }
    }

    @Test func unalignedDirectIOIsRefusedWithATypedError() async throws {
        try await withTemporaryDirectory { directory in
            try await withReactor { reactor in
                let kinds = try await reactor.run(on: 0) { context -> [String] in
                    let file = try await context.open("\(directory)/f", options: FileOpenOptions(create: true))
                    let buffer = try await context.buffers.acquire()
                    var kinds: [String] = []
                    for (address, count, offset) in [(1, 4096, UInt64(0)), (0, 100, 0), (0, 4096, 10)] {
                        do {
                            _ = try await file.write(
                                UnsafeRawBufferPointer(start: buffer.base + address, count: count), at: offset)
                            kinds.append("written")
                        } catch let error as IOError {
                            if case .unaligned(let what, _, 4096) = error.kind { kinds.append(what) }
                        }
                    }
                    try await file.close()
                    return kinds
                }
                #expect(kinds == ["buffer address", "length", "offset"])
            }
        }
    }

    @Test func errorsNameTheOperationTheTargetAndTheErrno() async throws {
        try await withTemporaryDirectory { directory in
            try await withReactor { reactor in
                let errors = try await reactor.run(on: 0) { context -> [IOError] in
                    var errors: [IOError] = []
                    do { _ = try await context.open("\(directory)/missing", options: FileOpenOptions()) } catch let error as IOError {
                        errors.append(error)
                    }
                    // A descriptor that is not open: the kernel answers EBADF.
                    let bogus = File(path: "bogus", descriptor: 999_999, isDirect: false, shard: context.shard)
                    let byte = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
                    defer { byte.deallocate() }
                    do { _ = try await bogus.read(into: byte, at: 0) }
                    catch let error as IOError { errors.append(error) }
                    do { try await bogus.close() } catch let error as IOError { errors.append(error) }
                    // A closed file refuses further use without reaching the kernel.
                    let file = try await context.open("\(directory)/f", options: FileOpenOptions(create: true))
                    try await file.close()
                    do { try await file.sync() } catch let error as IOError { errors.append(error) }
                    return errors
                }
                #expect(errors.count == 4)
                #expect(errors[0].operation == .open && errors[0].errno == ENOENT && errors[0].target.hasSuffix("missing"))
                #expect(errors[1].operation == .read && errors[1].errno == EBADF && errors[1].target == "bogus")
                #expect(errors[2].operation == .close && errors[2].errno == EBADF)
                #expect(errors[3].operation == .fdatasync && errors[3].errno == EBADF)
                #expect(errors[0].description.contains("ENOENT"))
            }
        }
    }

    @Test func aFullShardRefusesMoreRequestsAndRecovers() async throws {
        var configuration = ReactorConfiguration.testing(shards: 1)
        configuration.maxInFlightPerShard = 4
        try await withReactor(configuration) { reactor in
            let (refused, afterwards) = try await reactor.run(on: 0) { context -> (IOError.Kind?, Bool) in
                let shard = context.shard
                let sleepers = (0..<4).map { _ in
                    Task(executorPreference: shard) { try await ShardContext(shard: shard).sleep(for: .seconds(10)) }
                }
                // Let the four sleepers submit.
                while shard.completions.inFlight < 4 { await Task.yield() }
                var refused: IOError.Kind?
                do { try await context.nop() } catch let error as IOError { refused = error.kind }
                for sleeper in sleepers { sleeper.cancel() }
                for sleeper in sleepers { _ = await sleeper.result }
                // Slots come back once the cancelled requests complete.
                try await context.nop()
                return (refused, shard.completions.inFlight == 0)
            }
            #expect(refused == .tooManyInFlight(limit: 4))
            #expect(afterwards)
        }
    }

    @Test func requestsFromTheWrongShardAreRefused() async throws {
        try await withTemporaryDirectory { directory in
            try await withReactor { reactor in
                let kind = try await reactor.run(on: 0) { context -> IOError.Kind? in
                    let other = ShardContext(shard: reactor.shards[1])
                    do { _ = try await other.open("\(directory)/x", options: FileOpenOptions(create: true)) } catch let error as IOError {
                        return error.kind
                    }
                    return nil
                }
                #expect(kind == .wrongShard(expected: 1, actual: 0))
            }
        }
    }

    @Test func tcpEchoBetweenShards() async throws {
        try await withReactor { reactor in
            let port = try await reactor.run(on: 0) { context -> UInt16 in
                let listener = try context.listen(host: "127.0.0.1", port: 0)
                let shard = context.shard
                let port = listener.port
                // The server side lives on shard 0 until it has echoed one connection's bytes.
                let server = ShardBound(listener)
                Task(executorPreference: shard) {
                    let connection = try await server.value.accept()
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 64)
                    defer { buffer.deallocate() }
                    while true {
                        let n = try await connection.receive(into: buffer)
                        if n == 0 { break }
                        try await connection.send(UnsafeRawBufferPointer(rebasing: buffer[..<n]))
                    }
                    try await connection.close()
                    try await server.value.close()
                }
                return port
            }
            let echoed = try await reactor.run(on: 1) { context -> Bool in
                let connection = try await context.connect(host: "127.0.0.1", port: port)
                let size = 256 * 1024
                let out = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
                let back = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
                defer {
                    out.deallocate()
                    back.deallocate()
                }
                for i in 0..<size { out[i] = UInt8(truncatingIfNeeded: i &* 7) }
                try await connection.send(UnsafeRawBufferPointer(out))
                var received = 0
                while received < size {
                    let n = try await connection.receive(into: UnsafeMutableRawBufferPointer(rebasing: back[received...]))
                    if n == 0 { break }
                    received += n
                }
                try await connection.close()
                return received == size && memcmp(out.baseAddress!, back.baseAddress!, size) == 0
            }
            #expect(echoed)
        }
    }

    @Test func everyShardCanListenOnTheSamePort() async throws {
        try await withReactor { reactor in
            let port = try await reactor.run(on: 0) { context -> UInt16 in
                let listener = try context.listen(host: "127.0.0.1", port: 0)
                let port = listener.port
                try await listener.close()
                return port
            }
            // Two shards hold listeners on one port at once (SO_REUSEPORT), and a connection reaches one of them.
            let listeners = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<2 {
                    group.addTask {
                        try await reactor.run(on: index) { context -> Bool in
                            let listener = try context.listen(host: "127.0.0.1", port: port)
                            let ok = listener.port == port
                            try await context.sleep(for: .milliseconds(20))
                            try await listener.close()
                            return ok
                        }
                    }
                }
                return try await group.reduce(true) { $0 && $1 }
            }
            #expect(listeners)
        }
    }

    @Test func connectingToAClosedPortIsRefused() async throws {
        try await withReactor { reactor in
            let error = try await reactor.run(on: 0) { context -> IOError? in
                let listener = try context.listen(host: "127.0.0.1", port: 0)
                let port = listener.port
                try await listener.close()
                do { _ = try await context.connect(host: "127.0.0.1", port: port) } catch let error as IOError { return error }
                return nil
            }
            #expect(error?.operation == .connect)
            #expect(error?.errno == ECONNREFUSED)
        }
    }

    @Test func cancellingAReceiveEndsIt() async throws {
        try await withReactor { reactor in
            let kind = try await reactor.run(on: 0) { context -> IOError.Kind? in
                let listener = try context.listen(host: "127.0.0.1", port: 0)
                let client = try await context.connect(host: "127.0.0.1", port: listener.port)
                let server = try await listener.accept()
                let shard = context.shard
                let holder = ShardBound(server)
                let receiver = Task(executorPreference: shard) { () async throws -> Int in
                    let byte = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
                    defer { byte.deallocate() }
                    return try await holder.value.receive(into: byte)
                }
                try await context.sleep(for: .milliseconds(5))
                receiver.cancel()
                let result = await receiver.result
                try await server.close()
                try await client.close()
                try await listener.close()
                if case .failure(let error) = result { return (error as? IOError)?.kind }
                return nil
            }
            #expect(kind == .cancelled)
        }
    }

    @Test func bufferPoolIsBoundedAlignedAndReusable() async throws {
        var configuration = ReactorConfiguration.testing(shards: 1)
        configuration.bufferCount = 3
        try await withReactor(configuration) { reactor in
            let report = try await reactor.run(on: 0) { context -> [String] in
                let pool = context.buffers
                var report: [String] = ["kind=\(pool.memoryKind.rawValue)", "registered=\(pool.registered)"]
                do {
                    let a = pool.tryAcquire()!
                    let b = pool.tryAcquire()!
                    let c = pool.tryAcquire()!
                    report.append("aligned=\([a.base, b.base, c.base].allSatisfy { UInt(bitPattern: $0) % 4096 == 0 })")
                    report.append("exhausted=\(pool.tryAcquire() == nil)")
                    report.append("distinct=\(Set([a.index, b.index, c.index]).count)")
                }
                report.append("returned=\(pool.available)")
                return report
            }
            #expect(report.contains("aligned=true"))
            #expect(report.contains("exhausted=true"))
            #expect(report.contains("distinct=3"))
            #expect(report.contains("returned=3"))
            #expect(report.contains("registered=true"))
        }
    }

    @Test func aWaitingBufferRequestIsServedWhenOneReturns() async throws {
        var configuration = ReactorConfiguration.testing(shards: 1)
        configuration.bufferCount = 1
        try await withReactor(configuration) { reactor in
            let served = try await reactor.run(on: 0) { context -> Bool in
                let shard = context.shard
                var held: PooledBuffer? = context.buffers.tryAcquire()
                let waiter = Task(executorPreference: shard) { () async throws -> Int in
                    let buffer = try await ShardContext(shard: shard).buffers.acquire()
                    return buffer.index
                }
                try await context.sleep(for: .milliseconds(2))
                held = nil
                _ = held
                return try await waiter.value == 0
            }
            #expect(served)
        }
    }
}
}
