import Foundation

/// fio, run as a separate process on the same file as the reactor's benchmark: the disk's own baseline.
struct Fio {
    struct Latencies {
        /// Percentiles in microseconds, keyed 50, 99, 99.9: write latency (submission to completion) and fdatasync
        /// latency.
        var write: [Double: Double]
        var sync: [Double: Double]
        var iops: Double
        /// Write bandwidth in bytes per second.
        var bandwidth: Double = 0
    }

    static func available() -> Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/fio")
    }

    /// Sequential O_DIRECT writes of `blockBytes`, fdatasync after each, through io_uring, over a file of
    /// `sizeBytes`, with `queueDepth` writes in flight.
    static func writeWithFdatasync(file: String, sizeBytes: Int, blockBytes: Int, queueDepth: Int = 1) throws
        -> Latencies
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        process.arguments = [
            "--name=w", "--ioengine=io_uring", "--direct=1", "--rw=write", "--bs=\(blockBytes)",
            "--size=\(sizeBytes)", "--fdatasync=1", "--filename=\(file)", "--output-format=json",
            "--percentile_list=50:99:99.9", "--lat_percentiles=1", "--iodepth=\(queueDepth)",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
              let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let job = (root["jobs"] as? [[String: Any]])?.first,
              let write = job["write"] as? [String: Any],
              let sync = job["sync"] as? [String: Any]
        else { throw PerfError("fio failed (status \(process.terminationStatus))") }
        func percentiles(_ section: [String: Any], _ key: String) throws -> [Double: Double] {
            guard let lat = section[key] as? [String: Any], let table = lat["percentile"] as? [String: Any] else {
                throw PerfError("fio output has no \(key) percentiles")
            }
            var result: [Double: Double] = [:]
            for (k, v) in table {
                if let p = Double(k), let ns = (v as? NSNumber)?.doubleValue { result[p] = ns / 1000 }
            }
            return result
        }
        return Latencies(write: try percentiles(write, "lat_ns"), sync: try percentiles(sync, "lat_ns"),
                         iops: (write["iops"] as? NSNumber)?.doubleValue ?? 0,
                         bandwidth: ((write["bw_bytes"] as? NSNumber)?.doubleValue ?? 0))
    }

    /// Sequential O_DIRECT reads of `blockBytes` over a file of `sizeBytes`; returns bytes per second.
    static func sequentialRead(file: String, sizeBytes: Int, blockBytes: Int, queueDepth: Int = 8) throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        process.arguments = [
            "--name=r", "--ioengine=io_uring", "--direct=1", "--rw=read", "--bs=\(blockBytes)",
            "--size=\(sizeBytes)", "--filename=\(file)", "--output-format=json", "--iodepth=\(queueDepth)",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
              let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let job = (root["jobs"] as? [[String: Any]])?.first,
              let read = job["read"] as? [String: Any],
              let bandwidth = (read["bw_bytes"] as? NSNumber)?.doubleValue
        else { throw PerfError("fio read failed (status \(process.terminationStatus))") }
        return bandwidth
    }
}

struct PerfError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
