import Foundation

struct PerfOptions: Sendable {
    var directory: String
    var quick: Bool
    var pin: Bool
    /// A configuration file whose [reactor] table replaces the suite's own settings.
    var configFile: String?
    /// Run one group of figures only: nop, hop, cross, write.
    var only: String?
}

/// A suite that prints figures under its name.
protocol FigureSuite {
    var suiteName: String { get }
}

extension FigureSuite {
    func emit(_ name: String, _ value: Double, _ unit: String, _ better: Figure.Better, _ baseline: String,
              _ baselineValue: Double) {
        Figure(suite: suiteName, name: name, value: value, unit: unit, better: better, baseline: baseline,
               baselineValue: baselineValue).print()
    }
}

/// One measured figure beside its same-run baseline, printed as one JSON object per line:
/// `{"suite","name","value","unit","better","baseline","baseline_value","ratio"}` with ratio = value / baseline_value.
struct Figure {
    enum Better: String { case higher, lower }
    let suite: String
    let name: String
    let value: Double
    let unit: String
    let better: Better
    let baseline: String
    let baselineValue: Double

    func print() {
        let ratio = baselineValue != 0 ? value / baselineValue : 0
        let object: [(String, Any)] = [
            ("suite", suite), ("name", name), ("value", rounded(value)), ("unit", unit), ("better", better.rawValue),
            ("baseline", baseline), ("baseline_value", rounded(baselineValue)), ("ratio", rounded(ratio, places: 3)),
        ]
        let body = object.map { key, value -> String in
            if let string = value as? String { return "\"\(key)\":\"\(escape(string))\"" }
            return "\"\(key)\":\(value)"
        }.joined(separator: ",")
        FileHandle.standardOutput.write(Data("{\(body)}\n".utf8))
    }

    private func rounded(_ x: Double, places: Int = 2) -> Double {
        let scale = pow(10.0, Double(places))
        return (x * scale).rounded() / scale
    }

    private func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    }
}

/// Nearest-rank percentile of sorted samples.
func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    precondition(!sorted.isEmpty)
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
    return Double(sorted[max(0, min(sorted.count - 1, rank))])
}

func note(_ message: String) {
    FileHandle.standardError.write(Data("es-perf: \(message)\n".utf8))
}
