"""The atomic fast path must agree with the `atomics` package's public API on the same memory."""

import atomics

from ipc.atomic import AtomicWord


def test_fast_path_matches_public_api() -> None:
    buf = bytearray(64)
    mv = memoryview(buf)
    word = AtomicWord(mv, 8, 8)
    with atomics.atomicview(buffer=mv[8:16], atype=atomics.UINT) as public:
        word.store(12345)
        assert public.load() == 12345
        public.store(2**64 - 1)
        assert word.load() == 2**64 - 1
        assert word.fetch_add(1) == 2**64 - 1  # wraps
        assert public.load() == 0
        assert word.compare_exchange(0, 7)
        assert not word.compare_exchange(0, 9)
        assert public.load() == 7
        assert word.fetch_add(-1) == 7
        assert word.load() == 6
    word.close()


def test_u32_word() -> None:
    buf = bytearray(16)
    word = AtomicWord(memoryview(buf), 4, 4)
    assert word.fetch_add(-1) == 0
    assert word.load() == 2**32 - 1
    word.close()
    assert int.from_bytes(buf[4:8], "little") == 2**32 - 1
