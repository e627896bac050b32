import CSupport
import Testing

extension Serialized {
@Suite struct CSupportTests {
    @Test func xxh3MatchesTheReferenceAndStreamsLikeOneShot() {
        // XXH3_64bits of the empty input with seed 0, from the xxHash specification's test vectors.
        #expect(cs_xxh3_64(nil, 0, 0) == 0x2D06_8005_38D3_94C2)
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let oneShot = bytes.withUnsafeBytes { cs_xxh3_64($0.baseAddress, $0.count, 42) }
        let state = cs_xxh3_create(42)!
        defer { cs_xxh3_free(state) }
        bytes.withUnsafeBytes { all in
            var offset = 0
            for size in [1, 7, 100, 4096, 5000] where offset < all.count {
                let n = min(size, all.count - offset)
                cs_xxh3_update(state, all.baseAddress! + offset, n)
                offset += n
            }
            cs_xxh3_update(state, all.baseAddress! + offset, all.count - offset)
        }
        #expect(cs_xxh3_digest(state) == oneShot)
        let flipped = bytes.withUnsafeBytes { raw -> UInt64 in
            var copy = Array(raw)
            copy[5000] ^= 1
            return cs_xxh3_64(copy, copy.count, 42)
        }
        #expect(flipped != oneShot)
    }

    @Test func msgRingWakesAnotherRing() {
        var granted: UInt32 = 0
        var error: Int32 = 0
        // Plain rings (no single-issuer) so that this one test thread may drive both.
        let a = cs_ring_create(8, 16, &granted, &error)!
        let b = cs_ring_create(8, 16, &granted, &error)!
        defer {
            cs_ring_destroy(a)
            cs_ring_destroy(b)
        }
        #expect(cs_prep_msg_ring(a, cs_ring_fd(b), 7, 42, 1) == 0)
        #expect(cs_ring_submit_and_wait(a, 1, 1_000_000_000) >= 0)
        #expect(cs_ring_submit_and_wait(b, 1, 1_000_000_000) >= 0)
        var cqe = cs_cqe()
        #expect(cs_ring_reap(b, &cqe, 1) == 1)
        #expect(cqe.user_data == 42)
        #expect(cqe.res == 7)
    }

    @Test func alignedMemoryReportsWhatBacksIt() {
        var kind = CS_MEMORY_PAGES
        var mapped = 0
        let memory = cs_alloc_aligned(3 * 4096 + 1, 0, false, &kind, &mapped)
        #expect(memory != nil)
        #expect(UInt(bitPattern: memory) % 4096 == 0)
        #expect(mapped == 4 * 4096)
        #expect(kind == CS_MEMORY_PAGES)
        cs_free_aligned(memory, mapped, kind)
        let huge = cs_alloc_aligned(4096, 0, true, &kind, &mapped)
        #expect(huge != nil)
        #expect(mapped % (2 << 20) == 0)
        #expect([CS_MEMORY_HUGETLB, CS_MEMORY_TRANSPARENT_HUGE, CS_MEMORY_PAGES].contains(kind))
        cs_free_aligned(huge, mapped, kind)
    }

    @Test func cpusAndNumaNodesAreReported() {
        var cpus = [Int32](repeating: -1, count: 256)
        let n = cs_allowed_cpus(&cpus, 256)
        #expect(n >= 1)
        #expect(cs_numa_node_of_cpu(cpus[0]) >= 0)
        // Pinning to a CPU that does not exist is refused with an errno, not ignored.
        #expect(cs_pin_current_thread(100_000) < 0)
    }
}
}
