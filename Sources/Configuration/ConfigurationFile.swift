import TOMLKit

/// A configuration file that does not parse, or a key with a bad value: the message names the file, the table, the
/// key and the problem (a syntax error names its line).
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// The one reader of the configuration files in `Config/`: TOML (TOMLKit), one table per component (`[reactor]`,
/// `[pd]`, `[server]`), read by that component's configuration. One grammar for every value: durations are quoted
/// strings with a unit ("500ns", "250us", "50ms", "10s"), non-negative integers, zero only where a key allows it.
public struct ConfigurationFile {
    public let file: String
    private let document: TOMLTable

    public init(text: String, file: String = "<text>") throws(ConfigurationError) {
        self.file = file
        do {
            document = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(description: "\(file):\(error.source.begin.line): \(error.description)")
        } catch {
            throw ConfigurationError(description: "\(file): \(error)")
        }
    }

    /// Table `name`, or nil when the file has none.
    public func table(_ name: String) throws(ConfigurationError) -> ConfigurationTable? {
        guard let value = document[name] else { return nil }
        guard let table = value.table else { throw ConfigurationError(description: "\(file): [\(name)] must be a table") }
        return ConfigurationTable(name: name, file: file, table: table)
    }
}

/// One table: its keys in order, and typed readers whose errors name the key.
public struct ConfigurationTable {
    public let name: String
    public let file: String
    private let table: TOMLTable

    init(name: String, file: String, table: TOMLTable) {
        self.name = name
        self.file = file
        self.table = table
    }

    /// The keys, sorted (errors come out in the same order every time).
    public var keys: [String] { table.keys.sorted() }

    public func place(_ key: String) -> String { "\(file): [\(name)] \(key)" }

    public func error(_ key: String, _ problem: String) -> ConfigurationError {
        ConfigurationError(description: "\(place(key)) \(problem)")
    }

    public func unknown(_ key: String) -> ConfigurationError {
        ConfigurationError(description: "\(file): unknown key '\(key)' in [\(name)]")
    }

    private func value(_ key: String) -> TOMLValueConvertible? { table[key] }

    public func integer(_ key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let number = value(key)?.int, range.contains(number) else {
            throw error(key, "must be an integer in \(range), not \(value(key)?.debugDescription ?? "nothing")")
        }
        return number
    }

    public func bool(_ key: String) throws(ConfigurationError) -> Bool {
        guard let flag = value(key)?.bool else {
            throw error(key, "must be true or false, not \(value(key)?.debugDescription ?? "nothing")")
        }
        return flag
    }

    public func string(_ key: String) throws(ConfigurationError) -> String {
        guard let text = value(key)?.string else {
            throw error(key, "must be a quoted string, not \(value(key)?.debugDescription ?? "nothing")")
        }
        return text
    }

    /// Whether the value is the quoted string `text` (a keyword such as "all" or "off" beside a typed value).
    public func isString(_ key: String, _ text: String) -> Bool { value(key)?.string == text }

    public func strings(_ key: String) throws(ConfigurationError) -> [String] {
        guard let array = value(key)?.array else { throw error(key, "must be an array of quoted strings") }
        var out: [String] = []
        for item in array {
            guard let text = item.string else { throw error(key, "holds \(item.debugDescription), not a quoted string") }
            out.append(text)
        }
        return out
    }

    public func integers(_ key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> [Int] {
        guard let array = value(key)?.array else { throw error(key, "must be an array of integers") }
        var out: [Int] = []
        for item in array {
            guard let number = item.int, range.contains(number) else {
                throw error(key, "holds '\(item.debugDescription)', not an integer in \(range)")
            }
            out.append(number)
        }
        return out
    }

    /// A quoted duration: a non-negative integer and a unit, ns, us, ms or s ("50ms"); zero only with `allowZero`.
    public func duration(_ key: String, allowZero: Bool = false) throws(ConfigurationError) -> Duration {
        let text = value(key)?.string ?? ""
        let what = allowZero ? "a quoted duration such as \"50ms\"" : "a quoted positive duration such as \"50ms\""
        let units: [(String, Int64)] = [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)]
        for (suffix, nanoseconds) in units where text.hasSuffix(suffix) {
            guard let number = Int64(text.dropLast(suffix.count)), number >= 0, allowZero || number > 0 else { break }
            let (product, overflow) = number.multipliedReportingOverflow(by: nanoseconds)
            guard !overflow else { throw error(key, "is too long: \(text)") }
            return .nanoseconds(product)
        }
        throw error(key, "must be \(what), not \(value(key)?.debugDescription ?? "nothing")")
    }
}
