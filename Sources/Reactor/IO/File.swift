import CSupport
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// A file opened on one shard, read and written through that shard's ring at explicit offsets. Opened with
/// `direct` (the default), it bypasses the page cache and every buffer address, length and offset must be a multiple
/// of 4 KiB; a violation is an `.unaligned` error before anything reaches the kernel.
public final class File: ShardFile {
    public let path: String
    public let descriptor: Int32
    public let isDirect: Bool
    let shard: Shard
    /// The simulator's file, in a simulated reactor (`descriptor` is then -1).
    let simulated: (any SimulatedFile)?
    private var closed = false

    init(path: String, descriptor: Int32, isDirect: Bool, shard: Shard) {
        self.path = path
        self.descriptor = descriptor
        self.isDirect = isDirect
        self.shard = shard
        self.simulated = nil
    }

    init(path: String, simulated: any SimulatedFile, isDirect: Bool, shard: Shard) {
        self.path = path
        self.descriptor = -1
        self.isDirect = isDirect
        self.shard = shard
        self.simulated = simulated
    }

    deinit {
        // A file dropped without close() is closed here rather than leaked; close() is the way that reports errors.
        if !closed {
            if let simulated { simulated.close() } else { Glibc.close(descriptor) }
        }
    }

    static func open(_ path: String, options: FileOpenOptions, on shard: Shard) async throws(IOError) -> File {
        var flags = O_CLOEXEC | (options.readOnly ? O_RDONLY : O_RDWR)
        if options.create { flags |= O_CREAT }
        if options.truncate { flags |= O_TRUNC }
        if options.direct { flags |= cs_o_direct() }
        let mode = options.permissions
        // The copy lives until the request completes, whenever the loop submits it.
        guard let cPath = strdup(path) else { throw IOError(.open, .system(errno: ENOMEM), target: path) }
        defer { free(cPath) }
        let fd = try await shard.perform(.open, target: path, offloaded: true) { ring, userData, _ in
            cs_prep_openat(ring, AT_FDCWD, cPath, Int32(flags), mode, userData)
        }
        return File(path: path, descriptor: fd, isDirect: options.direct, shard: shard)
    }

    /// Renames a file through the ring. Like any rename, it is durable only once its directory is synced.
    static func rename(_ from: String, to: String, on shard: Shard) async throws(IOError) {
        guard let cFrom = strdup(from) else { throw IOError(.rename, .system(errno: ENOMEM), target: from) }
        defer { free(cFrom) }
        guard let cTo = strdup(to) else { throw IOError(.rename, .system(errno: ENOMEM), target: to) }
        defer { free(cTo) }
        _ = try await shard.perform(.rename, target: "\(from) -> \(to)", offloaded: true) { ring, userData, _ in
            cs_prep_renameat(ring, cFrom, cTo, userData)
        }
    }

    /// Makes the entries of directory `path` durable (files created in it, renames within it): opens it, fsyncs it
    /// and closes it, all through the ring.
    static func syncDirectory(_ path: String, on shard: Shard) async throws(IOError) {
        guard let cPath = strdup(path) else { throw IOError(.open, .system(errno: ENOMEM), target: path) }
        defer { free(cPath) }
        let fd = try await shard.perform(.open, target: path, offloaded: true) { ring, userData, _ in
            cs_prep_openat(ring, AT_FDCWD, cPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, userData)
        }
        defer { Glibc.close(fd) }
        _ = try await shard.perform(.fsync, target: path, offloaded: true) { ring, userData, _ in
            cs_prep_fsync(ring, fd, false, userData)
        }
    }

    private func checkOpen(_ operation: IOOperation) throws(IOError) {
        if closed { throw IOError(operation, .system(errno: EBADF), target: path) }
    }

    private func checkAlignment(_ operation: IOOperation, address: UnsafeRawPointer?, count: Int, offset: UInt64)
        throws(IOError)
    {
        guard isDirect else { return }
        let alignment = FileOpenOptions.directAlignment
        if let address, UInt(bitPattern: address) % UInt(alignment) != 0 {
            throw IOError(operation, .unaligned(what: "buffer address", value: UInt64(UInt(bitPattern: address)),
                                                alignment: alignment), target: path)
        }
        if count % alignment != 0 {
            throw IOError(operation, .unaligned(what: "length", value: UInt64(count), alignment: alignment),
                          target: path)
        }
        if offset % UInt64(alignment) != 0 {
            throw IOError(operation, .unaligned(what: "offset", value: offset, alignment: alignment), target: path)
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) async throws(IOError) -> Int {
        try checkOpen(.read)
        try checkAlignment(.read, address: buffer.baseAddress, count: buffer.count, offset: offset)
        if let simulated { return try await simulated.read(into: buffer, at: offset) }
        let fd = descriptor
        let result = try await shard.perform(.read, target: path) { ring, userData, _ in
            cs_prep_read(ring, fd, buffer.baseAddress, UInt32(buffer.count), offset, userData)
        }
        return Int(result)
    }

    /// Writes `buffer` at `offset`; `durable` adds RWF_DSYNC. `urgent` hands the request to the kernel at once
    /// rather than at the end of the loop turn.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, durable: Bool = false)
        async throws(IOError) -> Int
    {
        try await write(buffer, at: offset, durable: durable, urgent: false)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, durable: Bool, urgent: Bool)
        async throws(IOError) -> Int
    {
        try checkOpen(.write)
        try checkAlignment(.write, address: buffer.baseAddress, count: buffer.count, offset: offset)
        if let simulated { return try await simulated.write(buffer, at: offset, durable: durable) }
        let fd = descriptor
        let flags = durable ? cs_rwf_dsync() : 0
        let result = try await shard.perform(.write, target: path, offloaded: durable,
                                             urgent: urgent) { ring, userData, _ in
            cs_prep_write(ring, fd, buffer.baseAddress, UInt32(buffer.count), offset, flags, userData)
        }
        return Int(result)
    }

    /// Reads into a pooled buffer with fixed-buffer I/O (no page pinning per request). `length` defaults to the
    /// whole buffer.
    public func read(into buffer: borrowing PooledBuffer, length: Int? = nil, at offset: UInt64)
        async throws(IOError) -> Int
    {
        let count = length ?? buffer.count
        guard count <= buffer.count else {
            throw IOError(.read, .invalidArgument("length \(count) exceeds the buffer's \(buffer.count)"), target: path)
        }
        guard buffer.pool.registered, simulated == nil else {
            return try await read(into: UnsafeMutableRawBufferPointer(start: buffer.base, count: count), at: offset)
        }
        try checkOpen(.read)
        try checkAlignment(.read, address: buffer.base, count: count, offset: offset)
        let (fd, base, index) = (descriptor, buffer.base, Int32(buffer.index))
        let result = try await shard.perform(.read, target: path) { ring, userData, _ in
            cs_prep_read_fixed(ring, fd, base, UInt32(count), offset, index, userData)
        }
        return Int(result)
    }

    /// Writes the first `length` bytes of a pooled buffer with fixed-buffer I/O.
    public func write(_ buffer: borrowing PooledBuffer, length: Int? = nil, at offset: UInt64, durable: Bool = false)
        async throws(IOError) -> Int
    {
        let count = length ?? buffer.count
        guard count <= buffer.count else {
            throw IOError(.write, .invalidArgument("length \(count) exceeds the buffer's \(buffer.count)"), target: path)
        }
        guard buffer.pool.registered, simulated == nil else {
            return try await write(UnsafeRawBufferPointer(start: buffer.base, count: count), at: offset,
                                   durable: durable)
        }
        try checkOpen(.write)
        try checkAlignment(.write, address: buffer.base, count: count, offset: offset)
        let (fd, base, index) = (descriptor, buffer.base, Int32(buffer.index))
        let flags = durable ? cs_rwf_dsync() : 0
        let result = try await shard.perform(.write, target: path, offloaded: durable) { ring, userData, _ in
            cs_prep_write_fixed(ring, fd, base, UInt32(count), offset, index, flags, userData)
        }
        return Int(result)
    }

    public func sync() async throws(IOError) {
        try await sync(urgent: false)
    }

    public func sync(urgent: Bool) async throws(IOError) {
        try checkOpen(.fdatasync)
        if let simulated { return try await simulated.sync() }
        let fd = descriptor
        _ = try await shard.perform(.fdatasync, target: path, offloaded: true, urgent: urgent) { ring, userData, _ in
            cs_prep_fsync(ring, fd, true, userData)
        }
    }

    /// fsync: data and metadata (use after creating or resizing a file whose size matters).
    public func fullSync() async throws(IOError) {
        try checkOpen(.fsync)
        if let simulated { return try await simulated.sync() }
        let fd = descriptor
        _ = try await shard.perform(.fsync, target: path, offloaded: true) { ring, userData, _ in
            cs_prep_fsync(ring, fd, false, userData)
        }
    }

    public func allocate(at offset: UInt64, length: UInt64) async throws(IOError) {
        try checkOpen(.fallocate)
        if let simulated { return try await simulated.allocate(at: offset, length: length) }
        let fd = descriptor
        _ = try await shard.perform(.fallocate, target: path, offloaded: true) { ring, userData, _ in
            cs_prep_fallocate(ring, fd, 0, offset, length, userData)
        }
    }

    /// Cuts the file to `length` bytes (or extends it with zeros). Synchronous underneath on the reactor (it is rare:
    /// recovery of a torn tail); durable after `fullSync`.
    public func truncate(to length: UInt64) async throws(IOError) {
        try checkOpen(.write)
        if let simulated { return try await simulated.truncate(to: length) }
        if ftruncate(descriptor, off_t(length)) != 0 { throw IOError(.write, .system(errno: Glibc.errno), target: path) }
    }

    /// Closes the descriptor. Synchronous underneath: closing an O_DIRECT file is quick, and a close that could be
    /// refused (the task cancelled, the shard stopping) would leak the descriptor.
    public func close() async throws(IOError) {
        try checkOpen(.close)
        closed = true
        if let simulated { return simulated.close() }
        if Glibc.close(descriptor) != 0 { throw IOError(.close, .system(errno: Glibc.errno), target: path) }
    }
}

@available(*, unavailable)
extension File: Sendable {}
