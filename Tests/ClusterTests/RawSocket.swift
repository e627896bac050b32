import Foundation
import SwiftProtobuf
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking TCP socket on loopback for hostile-client tests: sends any bytes, and reads what the server
/// answers (frames, or the close) with a deadline. Not shard-bound; used from the test's own thread.
final class RawSocket {
    let fd: Int32
    private var decoder = FrameDecoder(limits: FrameLimits(maxFrameBytes: 64 << 20, maxHeaderBytes: 1 << 20))
    private var frames: [Frame] = []
    private(set) var closedByPeer = false

    init(port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let error = errno
            Glibc.close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: error) ?? .ECONNREFUSED)
        }
    }

    deinit { Glibc.close(fd) }

    /// Sends every byte; false when the peer has closed (a reset or a broken pipe).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    func send(_ frame: Frame) -> Bool { send((try? frame.encoded(limits: FrameLimits(maxFrameBytes: 64 << 20))) ?? []) }

    /// Reads until a frame arrives (returned), the peer closes (nil, `closedByPeer`), or `seconds` pass (nil).
    func nextFrame(within seconds: Double) -> Frame? {
        let deadline = Date().addingTimeInterval(seconds)
        while frames.isEmpty && !closedByPeer {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(max(1, min(left * 1000, 1000))))
            if ready <= 0 { continue }
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 {
                closedByPeer = true
                break
            }
            try? decoder.decode(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(start: buffer, count: n)[...])) {
                frames.append($0)
            }
        }
        return frames.isEmpty ? nil : frames.removeFirst()
    }

    /// Every frame until the peer closes or `seconds` pass; whether it closed.
    func drain(within seconds: Double) -> (frames: [Frame], closed: Bool) {
        var all: [Frame] = []
        let deadline = Date().addingTimeInterval(seconds)
        while deadline.timeIntervalSinceNow > 0 {
            if let frame = nextFrame(within: deadline.timeIntervalSinceNow) { all.append(frame) } else { break }
        }
        return (all, closedByPeer)
    }

    /// What a stream of answers says, for test messages: each frame's operation, error code, or GOAWAY reason.
    static func describe(_ frames: [Frame], closed: Bool) -> String {
        var parts: [String] = frames.map { frame in
            if frame.flags.contains(.error) {
                let status = (try? frame.header(as: Status.self)) ?? Status()
                return "error(op \(frame.rawOperation), id \(frame.requestID), \(status.code))"
            }
            if frame.operation == .goAway {
                let goAway = (try? frame.header(as: Elasticstream_V1_GoAway.self)) ?? Elasticstream_V1_GoAway()
                return "goaway(\(goAway.reason), last \(goAway.lastRequestID))"
            }
            return "\(frame.operation.map { "\($0)" } ?? "op \(frame.rawOperation)") id \(frame.requestID)"
        }
        if closed { parts.append("closed") }
        return parts.joined(separator: ", ")
    }
}

/// A request frame with `message` as its header.
func requestFrame(_ operation: OperationCode, id: UInt64, _ message: some SwiftProtobuf.Message,
                  payload: [UInt8] = []) -> Frame {
    try! Frame(request: operation, id: id, header: message, payload: payload)
}

/// The error code of an answer (OK for a success).
func errorCode(_ frame: Frame?) -> ErrorCode? {
    guard let frame else { return nil }
    guard frame.flags.contains(.error) else { return .ok }
    return ((try? frame.header(as: Status.self)) ?? Status()).code
}

/// Resident memory of process `pid` in bytes (VmRSS).
func residentBytes(_ pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else { return nil }
    return kb * 1024
}
