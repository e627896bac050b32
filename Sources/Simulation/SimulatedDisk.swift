import Platform
import Reactor

#if canImport(Glibc)
import Glibc
#endif

/// The disk of one simulated machine, with the durability rules of a real file system as the engine relies on them:
///
/// - a write lands in the file's current content; it is durable only after `sync` of the file (fdatasync), or at once
///   when written with `durable` (RWF_DSYNC);
/// - a new name (a created file, a rename, an unlink) is durable only after the directory is synced;
/// - at a crash, the file system keeps the durable names, and each file keeps its durable content plus, in order,
///   each later write with some probability, possibly torn at a 512-byte sector boundary.
public final class SimulatedDisk {
    final class Inode {
        /// What reads see now.
        var data: [UInt8] = []
        /// What a crash keeps for sure.
        var durable: [UInt8] = []
        /// Changes since the last sync, in order: a crash keeps each with some probability (a durable write always).
        var pending: [Change] = []
    }

    enum Change {
        case write(offset: Int, bytes: [UInt8], durable: Bool)
        case resize(Int)
    }

    /// Names as the running process sees them.
    private var names: [String: Inode] = [:]
    /// Names a crash keeps.
    private var durableNames: [String: Inode] = [:]
    private var directories: Set<String> = ["/"]

    public init() {}

    static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func normalized(_ path: String) -> String {
        var path = path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        return path
    }

    func open(_ path: String, options: FileOpenOptions) throws(IOError) -> Inode {
        let path = Self.normalized(path)
        if directories.contains(path) { throw IOError(.open, .system(errno: EISDIR), target: path) }
        if let inode = names[path] {
            if options.truncate {
                inode.data = []
                inode.pending.append(.resize(0))
            }
            return inode
        }
        guard options.create else { throw IOError(.open, .system(errno: ENOENT), target: path) }
        guard directories.contains(Self.parent(path)) else { throw IOError(.open, .system(errno: ENOENT), target: path) }
        let inode = Inode()
        names[path] = inode
        return inode
    }

    func rename(_ from: String, to: String) throws(IOError) {
        let (from, to) = (Self.normalized(from), Self.normalized(to))
        guard let inode = names.removeValue(forKey: from) else {
            throw IOError(.rename, .system(errno: ENOENT), target: from)
        }
        guard directories.contains(Self.parent(to)) else {
            names[from] = inode
            throw IOError(.rename, .system(errno: ENOENT), target: to)
        }
        names[to] = inode
    }

    func remove(_ path: String) throws(IOError) {
        guard names.removeValue(forKey: Self.normalized(path)) != nil else {
            throw IOError(.open, .system(errno: ENOENT), target: path)
        }
    }

    /// Makes the names in `directory` durable as they are now.
    func syncDirectory(_ directory: String) {
        let directory = Self.normalized(directory)
        for path in durableNames.keys.sorted() where Self.parent(path) == directory && names[path] == nil {
            durableNames[path] = nil
        }
        for (path, inode) in names.sorted(by: { $0.key < $1.key }) where Self.parent(path) == directory {
            durableNames[path] = inode
        }
    }

    /// Directories are made durable at once (the engine makes them at start, before anything is acknowledged).
    func createDirectory(_ path: String) {
        var prefix = ""
        for part in Self.normalized(path).split(separator: "/") {
            prefix += "/" + part
            directories.insert(prefix)
        }
    }

    func size(_ path: String) -> Int? {
        let path = Self.normalized(path)
        if directories.contains(path) { return 0 }
        return names[path]?.data.count
    }

    func list(_ path: String) throws(IOError) -> [String] {
        let path = Self.normalized(path)
        guard directories.contains(path) else { throw IOError(.open, .system(errno: ENOENT), target: path) }
        var result: [String] = []
        for name in names.keys where Self.parent(name) == path {
            result.append(String(name[name.index(after: name.lastIndex(of: "/")!)...]))
        }
        for directory in directories where directory != path && Self.parent(directory) == path {
            result.append(String(directory[directory.index(after: directory.lastIndex(of: "/")!)...]))
        }
        return result.sorted()
    }

    /// What a crash leaves: durable names only; in each file, its durable content plus each later change with the
    /// configured probability (a durable write always), a kept write possibly cut at a sector boundary.
    func crash(_ simulator: Simulator, survival: Double) {
        var seen = Set<ObjectIdentifier>()
        for path in durableNames.keys.sorted() {
            let inode = durableNames[path]!
            guard seen.insert(ObjectIdentifier(inode)).inserted else { continue }
            var content = inode.durable
            for change in inode.pending {
                switch change {
                case .resize(let length):
                    if simulator.chance(survival) { Self.resize(&content, to: length) }
                case .write(let offset, let bytes, let durable):
                    if durable || simulator.chance(survival) {
                        var kept = bytes.count
                        if !durable && bytes.count > 512 && simulator.chance(0.3) {
                            kept = Int(simulator.below(UInt64(bytes.count / 512))) * 512
                        }
                        Self.write(&content, at: offset, bytes[0..<kept])
                    }
                }
            }
            inode.data = content
            inode.durable = content
            inode.pending = []
        }
        names = durableNames
    }

    static func resize(_ content: inout [UInt8], to length: Int) {
        if content.count > length {
            content.removeLast(content.count - length)
        } else if content.count < length {
            content.append(contentsOf: repeatElement(0, count: length - content.count))
        }
    }

    static func write(_ content: inout [UInt8], at offset: Int, _ bytes: ArraySlice<UInt8>) {
        if content.count < offset + bytes.count { resize(&content, to: offset + bytes.count) }
        content.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
    }

    /// Forgets everything (the end of a run).
    func wipe() {
        for inode in Array(names.values) + Array(durableNames.values) {
            inode.data = []
            inode.durable = []
            inode.pending = []
        }
        names = [:]
        durableNames = [:]
    }
}

/// A file of a simulated disk, open in one process.
final class SimulatedDiskFile: SimulatedFile {
    let path: String
    let inode: SimulatedDisk.Inode
    unowned let process: SimulatedProcess
    let readOnly: Bool
    let generation: Int

    init(path: String, inode: SimulatedDisk.Inode, process: SimulatedProcess, readOnly: Bool, generation: Int) {
        self.path = path
        self.inode = inode
        self.process = process
        self.readOnly = readOnly
        self.generation = generation
    }

    /// A file opened before a crash is gone with the process that opened it.
    private func check(_ operation: IOOperation) throws(IOError) {
        guard process.generation == generation else { throw IOError(operation, .system(errno: EBADF), target: path) }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) async throws(IOError) -> Int {
        await process.delay(process.diskLatency())
        try check(.read)
        try process.failMaybe(.read, path)
        let data = inode.data
        guard offset < UInt64(data.count) else { return 0 }
        let start = Int(offset)
        let count = min(buffer.count, data.count - start)
        data.withUnsafeBytes { source in
            buffer.baseAddress!.copyMemory(from: source.baseAddress! + start, byteCount: count)
        }
        let simulator = process.simulator
        if count > 0 && simulator.chance(process.diskFaults.corruptionRate) {
            let at = Int(simulator.below(UInt64(count)))
            buffer[at] ^= UInt8(1 << simulator.below(8))
            simulator.trace(7, UInt64(process.id))
        }
        return count
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, durable: Bool) async throws(IOError) -> Int {
        guard !readOnly else { throw IOError(.write, .system(errno: EBADF), target: path) }
        // The bytes are taken now, as the kernel would take them when the request starts.
        let bytes = Array(buffer)
        await process.delay(process.diskLatency())
        try check(.write)
        try process.failMaybe(.write, path)
        var start = Int(offset)
        let simulator = process.simulator
        if simulator.chance(process.diskFaults.misdirectionRate) {
            let blocks = Int(simulator.between(1, 4)) * 4096
            let target = simulator.chance(0.5) ? start + blocks : start - blocks
            simulator.trace(8, UInt64(process.id))
            process.misdirectedWrites += 1
            guard target >= 0 && target + bytes.count <= inode.data.count else {
                return bytes.count  // lost: it landed nowhere
            }
            start = target
        }
        SimulatedDisk.write(&inode.data, at: start, bytes[...])
        if durable && inode.pending.isEmpty {
            // Nothing unsynced before it: the write is simply part of what a crash keeps.
            SimulatedDisk.write(&inode.durable, at: start, bytes[...])
        } else {
            inode.pending.append(.write(offset: start, bytes: bytes, durable: durable))
        }
        return bytes.count
    }

    func sync() async throws(IOError) {
        await process.delay(process.diskLatency())
        try check(.fdatasync)
        try process.failMaybe(.fdatasync, path)
        inode.durable = inode.data
        inode.pending = []
    }

    func allocate(at offset: UInt64, length: UInt64) async throws(IOError) {
        await process.delay(process.diskLatency())
        try check(.fallocate)
        let end = Int(offset + length)
        if inode.data.count < end {
            SimulatedDisk.resize(&inode.data, to: end)
            inode.pending.append(.resize(end))
        }
    }

    func truncate(to length: UInt64) async throws(IOError) {
        try check(.write)
        SimulatedDisk.resize(&inode.data, to: Int(length))
        inode.pending.append(.resize(Int(length)))
    }

    func close() {}
}
