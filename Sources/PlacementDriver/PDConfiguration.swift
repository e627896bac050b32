import Foundation
import Raft

/// The `[pd]` table of a configuration file in `Config/` (the same TOML subset as `[reactor]`: `key = value` lines,
/// integers, quoted strings, arrays of quoted strings, durations as "50ms"). Unknown keys and bad values are errors
/// that name the file, the line and the key.
public struct PDConfiguration: Sendable, Hashable {
    /// This member's id in the group.
    public var memberID: NodeID = 1
    /// Where this member keeps its Raft log.
    public var dataDirectory = "/var/tmp/elastic-stream/pd"
    /// Every member of a new group as "id=host:port", this one included. One member by default (the embedded
    /// default: a single-member quorum).
    public var members: [MemberAddress] = [MemberAddress(id: 1, host: "127.0.0.1", port: 2380)]
    public var tick: Duration = .milliseconds(50)
    public var electionTicks = 10
    public var heartbeatTicks = 1
    /// A range server silent for longer is not given new replicas.
    public var serverHeartbeatTimeout: Duration = .seconds(10)
    public var snapshotEvery: UInt64 = 100_000

    public init() {}

    public var ownAddress: MemberAddress? { members.first { $0.id == memberID } }

    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public init(configurationText text: String, file: String = "<text>") throws(Invalid) {
        self.init()
        var table = ""
        var sawMembers = false
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = Self.stripComment(String(raw)).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            let place = "\(file):\(number + 1)"
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw Invalid(description: "\(place): unterminated table header") }
                table = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard table == "pd" else { continue }
            guard let equals = line.firstIndex(of: "=") else { throw Invalid(description: "\(place): expected key = value") }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            switch key {
            case "member_id": memberID = NodeID(try Self.integer(key, value, place, in: 1...Int(Int32.max)))
            case "data_dir": dataDirectory = try Self.string(key, value, place)
            case "members":
                members = try Self.strings(key, value, place).map { (item) throws(Invalid) in try Self.member(item, place) }
                sawMembers = true
            case "tick": tick = try Self.duration(key, value, place)
            case "election_ticks": electionTicks = try Self.integer(key, value, place, in: 2...10_000)
            case "heartbeat_ticks": heartbeatTicks = try Self.integer(key, value, place, in: 1...10_000)
            case "server_heartbeat_timeout": serverHeartbeatTimeout = try Self.duration(key, value, place)
            case "snapshot_every": snapshotEvery = UInt64(try Self.integer(key, value, place, in: 10...100_000_000))
            default: throw Invalid(description: "\(place): unknown key '\(key)' in [pd]")
            }
        }
        if !sawMembers { members = [MemberAddress(id: memberID, host: "127.0.0.1", port: 2380)] }
        try validate(file)
    }

    public func validate(_ file: String = "<text>") throws(Invalid) {
        guard heartbeatTicks < electionTicks else {
            throw Invalid(description: "\(file): [pd] heartbeat_ticks (\(heartbeatTicks)) must be below election_ticks (\(electionTicks))")
        }
        guard Set(members.map(\.id)).count == members.count else {
            throw Invalid(description: "\(file): [pd] members lists an id twice")
        }
        guard ownAddress != nil else {
            throw Invalid(description: "\(file): [pd] member_id \(memberID) is not among members \(members.map(\.id))")
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

    private static func integer(_ key: String, _ text: String, _ place: String, in range: ClosedRange<Int>)
        throws(Invalid) -> Int
    {
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")), range.contains(value) else {
            throw Invalid(description: "\(place): \(key) must be an integer in \(range), not \(text)")
        }
        return value
    }

    private static func string(_ key: String, _ text: String, _ place: String) throws(Invalid) -> String {
        guard text.count >= 2, text.hasPrefix("\""), text.hasSuffix("\"") else {
            throw Invalid(description: "\(place): \(key) must be a quoted string, not \(text)")
        }
        return String(text.dropFirst().dropLast())
    }

    private static func strings(_ key: String, _ text: String, _ place: String) throws(Invalid) -> [String] {
        guard text.hasPrefix("["), text.hasSuffix("]") else {
            throw Invalid(description: "\(place): \(key) must be an array of quoted strings, not \(text)")
        }
        var items: [String] = []
        for item in text.dropFirst().dropLast().split(separator: ",") {
            let trimmed = item.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            items.append(try string(key, trimmed, place))
        }
        guard !items.isEmpty else { throw Invalid(description: "\(place): \(key) must not be empty") }
        return items
    }

    private static func member(_ item: String, _ place: String) throws(Invalid) -> MemberAddress {
        let parts = item.split(separator: "=")
        let address = parts.count == 2 ? parts[1].split(separator: ":") : []
        guard parts.count == 2, let id = NodeID(parts[0]), id > 0, address.count == 2, let port = UInt16(address[1])
        else {
            throw Invalid(description: "\(place): members holds '\(item)', not \"id=host:port\"")
        }
        return MemberAddress(id: id, host: String(address[0]), port: port)
    }

    private static func duration(_ key: String, _ text: String, _ place: String) throws(Invalid) -> Duration {
        let body = (try? string(key, text, place)) ?? ""
        let units: [(String, Int64)] = [("ms", 1_000_000), ("us", 1_000), ("s", 1_000_000_000)]
        for (suffix, nanoseconds) in units where body.hasSuffix(suffix) {
            if let value = Int64(body.dropLast(suffix.count)), value > 0 { return .nanoseconds(value * nanoseconds) }
        }
        throw Invalid(description: "\(place): \(key) must be a quoted positive duration such as \"50ms\", not \(text)")
    }
}
