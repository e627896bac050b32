import Foundation
import Testing
@testable import Reactor
import Configuration

extension Serialized {
@Suite struct ConfigurationTests {
    /// The repository's own configuration files parse and pass validation.
    @Test func shippedConfigurationFilesAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        for name in ["node.toml", "test.toml"] {
            let path = root.appendingPathComponent("Config/\(name)").path
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let configuration = try ReactorConfiguration(configurationText: text, file: name)
            if name == "test.toml" {
                #expect(configuration.cpus == [0, 1])
                #expect(configuration.pinThreads == false)
                #expect(configuration.pollDuration == .microseconds(50))
                #expect(configuration.drainTimeout == .milliseconds(500))
            } else {
                #expect(configuration.cpus == nil)
                #expect(configuration.stallThreshold == .milliseconds(25))
                #expect(configuration.bufferSizeBytes == 131_072)
            }
        }
    }

    /// Mistakes name the file and the key (a syntax error: the file and the line), read by the one configuration
    /// reader every table shares.
    @Test func badValuesAreRefusedByName() {
        let cases: [(String, String)] = [
            ("[reactor]\nring_entries = 100\n", "power of two"),
            ("[reactor]\npoll_duration = 5\n", "t.toml: [reactor] poll_duration"),
            ("[reactor]\npoll_duration = \"5 fortnights\"\n", "poll_duration"),
            ("[reactor]\ncpus = [0, -1]\n", "[reactor] cpus"),
            ("[reactor]\ncpus = [0, x]\n", "t.toml:2"),
            ("[reactor]\npin_threads = \"yes\"\n", "true or false"),
            ("[reactor]\nbufer_count = 3\n", "unknown key 'bufer_count'"),
            ("[reactor]\ndrain_timeout = \"0s\"\n", "positive duration"),
            ("[reactor\n", "t.toml:1"),
        ]
        for (text, fragment) in cases {
            do {
                _ = try ReactorConfiguration(configurationText: text, file: "t.toml")
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(fragment), "\(error.description) lacks \(fragment)")
            }
        }
    }

    /// One duration grammar for every table: ns, us, ms and s, zero only where the key allows it.
    @Test func oneDurationGrammar() throws {
        func poll(_ text: String) throws -> Duration {
            try ReactorConfiguration(configurationText: "[reactor]\npoll_duration = \"\(text)\"\n").pollDuration
        }
        #expect(try poll("500ns") == .nanoseconds(500))
        #expect(try poll("20us") == .microseconds(20))
        #expect(try poll("3ms") == .milliseconds(3))
        #expect(try poll("0us") == .zero)
        let drain = try ReactorConfiguration(configurationText: "[reactor]\ndrain_timeout = \"2s\"\n").drainTimeout
        #expect(drain == .seconds(2))
        #expect(throws: ConfigurationError.self) {
            _ = try ReactorConfiguration(configurationText: "[reactor]\npoll_duration = \"-1us\"\n")
        }
    }

    @Test func otherTablesAndCommentsAreIgnored() throws {
        let text = """
            # a comment
            [server]
            port = 9999   # not the reactor's
            [reactor]
            stall_threshold = "off" # disabled
            cpus = [1]
            """
        let configuration = try ReactorConfiguration(configurationText: text)
        #expect(configuration.stallThreshold == nil)
        #expect(configuration.cpus == [1])
    }
}
}
