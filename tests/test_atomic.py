"""GuestMemoryAtomic: snapshots, the updater lock, hotplug with bitmaps carried over."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from npguest import (
    AtomicBitmap,
    GuestAddressSpace,
    GuestMemoryAtomic,
    GuestMemoryMmap,
    GuestRegionMmap,
)
from npguest.errors import AddressSpaceError, InvalidGuestAddressError

PAGE = 0x1000


def region(start, size=PAGE):
    return GuestRegionMmap.from_range(start, size, bitmap=AtomicBitmap)


def test_memory_and_replace():
    first = GuestMemoryMmap.from_regions([region(0)])
    space = GuestMemoryAtomic(first)
    assert space.memory() is first and isinstance(space, GuestAddressSpace)
    assert isinstance(first, GuestAddressSpace) and first.memory() is first
    snapshot = space.memory()
    with space.lock() as guard:
        assert guard.memory is first
        guard.replace(first.insert_region(region(PAGE)))
    assert snapshot.num_regions() == 1 and space.memory().num_regions() == 2
    assert "GuestMemoryAtomic" in repr(space)


def test_guard_rules():
    space = GuestMemoryAtomic(GuestMemoryMmap.from_regions([region(0)]))
    guard = space.lock()
    assert "held" in repr(guard)
    with pytest.raises(AddressSpaceError, match="not free"):
        space.lock(timeout=0.01)  # updaters are serialised
    with pytest.raises(TypeError):
        guard.replace("not a memory")
    assert "spent" in repr(guard)  # a failed replace publishes nothing but frees the lock
    guard = space.lock(timeout=0.01)
    guard.replace(space.memory())
    assert "spent" in repr(guard)
    with pytest.raises(AddressSpaceError, match="already used"):
        guard.replace(space.memory())
    with pytest.raises(AddressSpaceError):
        guard.release()
    with space.lock():  # leaving the block releases the lock unchanged
        pass
    space.lock(timeout=0.01).release()
    space.lock(timeout=-5).release()  # any negative timeout waits
    with pytest.raises(TypeError):
        GuestMemoryAtomic(object())
    assert copy.copy(space) is space and copy.deepcopy(space) is space  # one shared cell


def test_hotplug_carries_contents_and_bitmaps():
    space = GuestMemoryAtomic(GuestMemoryMmap.from_regions([region(0), region(PAGE)]))
    space.memory().write_obj(0xAB, 0x10, "u1")
    space.memory().write_obj(0xCD, PAGE + 0x10, "u1")
    with space.lock() as guard:
        mem, removed = guard.memory.remove_region(PAGE, PAGE)
        guard.replace(mem.insert_region(region(4 * PAGE)))
    new = space.memory()
    assert new.read_obj(0x10, "u1") == 0xAB
    assert new.dirty_ranges().tolist() == [[0, PAGE]]  # the kept region's bitmap
    with pytest.raises(InvalidGuestAddressError):
        new.read_obj(PAGE + 0x10, "u1")
    assert removed.read_obj(0x10, "u1") == 0xCD  # the unplugged region is still valid
    # re-plug the removed region elsewhere: its contents and dirty bits move with it
    with space.lock() as guard:
        moved = GuestRegionMmap.with_arc(removed.get_mmap(), 8 * PAGE)
        guard.replace(guard.memory.insert_region(moved))
    assert space.memory().read_obj(8 * PAGE + 0x10, "u1") == 0xCD
    assert space.memory().dirty_ranges().tolist() == [[0, PAGE], [8 * PAGE, PAGE]]


def test_snapshots_stay_consistent_under_concurrent_replace():
    """Readers never see a memory change under them while an updater hotplugs."""
    space = GuestMemoryAtomic(GuestMemoryMmap.from_regions([region(0)]))
    stop = threading.Event()
    problems, seen, published = [], set(), []

    def updater():
        while len(published) < 60:
            with space.lock() as guard:
                mem = guard.memory
                if mem.num_regions() < 6:
                    new = mem.insert_region(region(mem.num_regions() * PAGE))
                else:
                    new = GuestMemoryMmap.from_regions([next(mem.iter())])
                guard.replace(new)
            published.append(new.num_regions())
            time.sleep(0.0002)  # let the readers run between publications
        stop.set()

    def reader():
        while not stop.is_set():
            mem = space.memory()
            count = mem.num_regions()
            seen.add(count)
            # every region of the snapshot stays there and usable, however often the
            # space is replaced meanwhile
            for i in range(count):
                mem.read_obj(i * PAGE + 8, "<u8")
            if mem.num_regions() != count or int(mem.last_addr()) != count * PAGE - 1:
                problems.append(count)

    threads = [threading.Thread(target=updater)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not problems
    assert len(seen) > 1  # replacements did happen while readers ran


# -- a stateful model: contents and dirty pages through writes, resets and hotplug ----------

SLOTS = 6  # possible regions: slot i is guest [i * STRIDE, i * STRIDE + 2 * PAGE)
STRIDE = 3 * PAGE  # a one-page hole between slots


class AddressSpaceMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.space = GuestMemoryAtomic(GuestMemoryMmap.from_regions([self._new(0)]))
        self.model = {0: bytearray(2 * PAGE)}  # slot -> contents
        self.dirty = {0: set()}  # slot -> dirty page indices
        self.unplugged = {}  # slot -> (region, contents, dirty)
        self.held = self.space.memory()  # a snapshot kept across updates
        self.held_model = {0: bytes(2 * PAGE)}

    @staticmethod
    def _new(slot):
        return GuestRegionMmap.from_range(slot * STRIDE, 2 * PAGE, bitmap=AtomicBitmap)

    def _publish(self, mem):
        with self.space.lock() as guard:
            guard.replace(mem)

    @rule(
        slot=st.integers(0, SLOTS - 1),
        off=st.integers(0, 2 * PAGE - 1),
        data=st.binary(min_size=1, max_size=64),
    )
    def write(self, slot, off, data):
        mem = self.space.memory()
        addr = slot * STRIDE + off
        if slot not in self.model:
            with pytest.raises(InvalidGuestAddressError):
                mem.write(data, addr)
            return
        n = mem.write(data, addr)
        assert n == min(len(data), 2 * PAGE - off)
        self.model[slot][off : off + n] = data[:n]
        self.dirty[slot] |= set(range(off // PAGE, (off + n - 1) // PAGE + 1))

    @rule(slot=st.integers(0, SLOTS - 1), off=st.integers(0, 2 * PAGE - 8))
    def read(self, slot, off):
        if slot in self.model:
            got = self.space.memory().read_obj(slot * STRIDE + off, "<u8")
            assert got == int.from_bytes(self.model[slot][off : off + 8], "little")

    @rule()
    def reset(self):
        taken = self.space.memory().get_and_reset_dirty()
        want = []
        for slot in sorted(self.dirty):
            for p in sorted(self.dirty[slot]):
                start = slot * STRIDE + p * PAGE
                if want and want[-1][0] + want[-1][1] == start:
                    want[-1][1] += PAGE
                else:
                    want.append([start, PAGE])
            self.dirty[slot] = set()
        assert taken.tolist() == want

    @precondition(lambda self: len(self.model) < SLOTS)
    @rule(data=st.data())
    def insert(self, data):
        slot = data.draw(st.sampled_from([s for s in range(SLOTS) if s not in self.model]))
        if slot in self.unplugged and data.draw(st.booleans()):
            region_, contents, dirty = self.unplugged.pop(slot)  # plug the old one back
        else:
            region_, contents, dirty = self._new(slot), bytearray(2 * PAGE), set()
        self._publish(self.space.memory().insert_region(region_))
        self.model[slot], self.dirty[slot] = contents, dirty

    @precondition(lambda self: len(self.model) > 1)
    @rule(data=st.data())
    def remove(self, data):
        slot = data.draw(st.sampled_from(sorted(self.model)))
        mem, removed = self.space.memory().remove_region(slot * STRIDE, 2 * PAGE)
        self._publish(mem)
        self.unplugged[slot] = (removed, self.model.pop(slot), self.dirty.pop(slot))

    @rule()
    def swap_held(self):
        self.held = self.space.memory()
        self.held_model = {s: bytes(c) for s, c in self.model.items()}

    @invariant()
    def contents_and_dirty_match(self):
        mem = self.space.memory()
        assert [int(r.start_addr()) // STRIDE for r in mem.iter()] == sorted(self.model)
        for r in mem.iter():
            slot = int(r.start_addr()) // STRIDE
            assert r.as_array().tobytes() == bytes(self.model[slot])
        want = sorted(s * STRIDE + p * PAGE for s, ps in self.dirty.items() for p in ps)
        assert mem.dirty_pages().tolist() == want

    @invariant()
    def held_snapshot_keeps_its_regions(self):
        assert sorted(int(r.start_addr()) // STRIDE for r in self.held.iter()) == sorted(
            self.held_model
        )


TestAddressSpaceMachine = AddressSpaceMachine.TestCase
TestAddressSpaceMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_bitmap_words_reachable_after_many_hotplugs():
    """Regions keep their own bitmaps whatever memory they are in."""
    r = region(0)
    mems = [GuestMemoryMmap.from_regions([r])]
    for i in range(1, 5):
        mems.append(mems[-1].insert_region(region(i * PAGE)))
    mems[-1].write_objs(np.arange(5, dtype="<u8"), np.arange(5, dtype=np.uint64) * PAGE)
    assert mems[0].dirty_pages().tolist() == [0]
    assert mems[-1].dirty_pages().tolist() == [i * PAGE for i in range(5)]
