import Foundation
import Testing
@testable import Reactor

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

    @Test func badValuesAreRefusedWithTheLine() {
        let cases: [(String, String)] = [
            ("[reactor]\nring_entries = 100\n", "power of two"),
            ("[reactor]\npoll_duration = 5\n", "t.toml:2"),
            ("[reactor]\npoll_duration = \"5 fortnights\"\n", "poll_duration"),
            ("[reactor]\ncpus = [0, x]\n", "'x'"),
            ("[reactor]\npin_threads = yes\n", "true or false"),
            ("[reactor]\nbufer_count = 3\n", "unknown key 'bufer_count'"),
            ("[reactor\n", "unterminated"),
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
