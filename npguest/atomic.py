"""An atomically swappable guest address space (vm-memory's ``GuestMemoryAtomic``).

A :class:`GuestMemoryMmap` never changes: ``insert_region`` and ``remove_region`` return
new memories.  :class:`GuestMemoryAtomic` holds the current one and lets a VMM publish a
new one (memory hotplug) while other threads keep using the snapshot they loaded --
RCU-style.  Readers call :meth:`GuestMemoryAtomic.memory` (one attribute read, no lock);
an updater takes :meth:`GuestMemoryAtomic.lock` and publishes with
:meth:`GuestMemoryExclusiveGuard.replace`.  Regions kept by the new memory are the same
objects, so their contents and dirty bitmaps carry over.

Never ``close()`` a memory you published (a reader may hold it as its snapshot): once no
reader can hold it any more, close the regions you unplugged instead.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

from .errors import AddressSpaceError
from .guest_memory import GuestMemoryMmap

__all__ = ["GuestAddressSpace", "GuestMemoryAtomic", "GuestMemoryExclusiveGuard"]


@runtime_checkable
class GuestAddressSpace(Protocol):
    """Anything that hands out a consistent snapshot of guest memory.

    A :class:`GuestMemoryMmap` (its own snapshot) and a :class:`GuestMemoryAtomic` are
    both address spaces.
    """

    def memory(self) -> GuestMemoryMmap:
        """Return the current memory: a snapshot that stays valid while it is held.

        Returns
        -------
        GuestMemoryMmap
            The snapshot.
        """
        ...  # pragma: no cover - protocol


def _checked(memory: object) -> GuestMemoryMmap:
    if not isinstance(memory, GuestMemoryMmap):
        raise TypeError(f"expected a GuestMemoryMmap, got {type(memory).__name__}")
    return memory


class GuestMemoryAtomic:
    """A guest memory that can be replaced atomically (memory hotplug).

    Parameters
    ----------
    memory : GuestMemoryMmap
        The initial memory.

    Raises
    ------
    TypeError
        ``memory`` is not a :class:`GuestMemoryMmap`.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap, GuestRegionMmap
    >>> space = GuestMemoryAtomic(GuestMemoryMmap.from_ranges([(0, 0x1000)]))
    >>> before = space.memory()
    >>> with space.lock() as guard:                       # hotplug a second region
    ...     guard.replace(guard.memory.insert_region(GuestRegionMmap.from_range(0x1000, 0x1000)))
    >>> before.num_regions(), space.memory().num_regions()
    (1, 2)
    """

    __slots__ = ("_lock", "_memory")

    def __init__(self, memory: GuestMemoryMmap) -> None:
        self._memory = _checked(memory)
        self._lock = threading.Lock()

    def memory(self) -> GuestMemoryMmap:
        """Return the current memory (a consistent snapshot; no lock is taken).

        The snapshot never changes and stays valid while held, whatever is published
        after it.

        Returns
        -------
        GuestMemoryMmap
            The memory published last.
        """
        return self._memory

    def lock(self, timeout: float = -1) -> GuestMemoryExclusiveGuard:
        """Take the updater lock (updaters are serialised; readers never wait).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait; negative (the default) waits forever.

        Returns
        -------
        GuestMemoryExclusiveGuard
            The guard: publish with :meth:`~GuestMemoryExclusiveGuard.replace`, or leave
            its ``with`` block to release the lock unchanged.

        Raises
        ------
        AddressSpaceError
            The lock could not be taken within ``timeout``.
        """
        if not self._lock.acquire(timeout=-1 if timeout < 0 else timeout):
            raise AddressSpaceError(f"the address space lock was not free within {timeout} s")
        return GuestMemoryExclusiveGuard(self)

    def __copy__(self) -> GuestMemoryAtomic:
        """Return ``self``: copies share the cell, as clones of vm-memory's do."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> GuestMemoryAtomic:
        """Return ``self``: an address space is a shared cell, never duplicated."""
        return self

    def __repr__(self) -> str:
        return f"GuestMemoryAtomic({self._memory!r})"


class GuestMemoryExclusiveGuard:
    """The updater lock of a :class:`GuestMemoryAtomic`, held until replaced or released.

    Use it as a context manager; leaving the block releases the lock if
    :meth:`replace` did not.

    Parameters
    ----------
    space : GuestMemoryAtomic
        The address space whose lock the caller holds.

    Attributes
    ----------
    memory : GuestMemoryMmap
        The memory current when the lock was taken (no other updater can change it
        while the guard is held).
    """

    __slots__ = ("_space", "memory")

    def __init__(self, space: GuestMemoryAtomic) -> None:
        self._space: GuestMemoryAtomic | None = space
        self.memory = space._memory

    def replace(self, memory: GuestMemoryMmap) -> None:
        """Publish ``memory`` and release the lock (the guard is spent afterwards).

        Snapshots loaded before keep seeing the old memory; every later
        :meth:`GuestMemoryAtomic.memory` call sees the new one.

        Parameters
        ----------
        memory : GuestMemoryMmap
            The new memory.

        Raises
        ------
        TypeError
            ``memory`` is not a :class:`GuestMemoryMmap` (nothing is published, and the
            lock is released all the same).
        AddressSpaceError
            The guard was already spent (replaced or released).
        """
        space = self._held()
        try:
            space._memory = _checked(memory)
        finally:  # spent either way, like the Rust guard it models (never a leaked lock)
            self.release()

    def release(self) -> None:
        """Release the lock without publishing anything.

        Raises
        ------
        AddressSpaceError
            The guard was already spent.
        """
        space = self._held()
        self._space = None
        space._lock.release()

    def _held(self) -> GuestMemoryAtomic:
        if self._space is None:
            raise AddressSpaceError("this guard was already used: take lock() again")
        return self._space

    def __enter__(self) -> GuestMemoryExclusiveGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._space is not None:
            self.release()

    def __repr__(self) -> str:
        state = "held" if self._space is not None else "spent"
        return f"<GuestMemoryExclusiveGuard {state}>"
