"""What crosses between web workers and engines: messages, pipe frames, shared memory.

Runs in:      both sides of the pipes (web workers and engines) and the master (shared counters).
May import:   numpy and the standard library only.
Owns:         the protocol (``protocol``), framing (``frames``), segments and their reuse
              (``segment``, ``segment_pool``), counters (``shared``), packed offsets (``packing``).
Entry points: ``protocol.encode``/``decode``, ``segment.Segment``, ``packing.Packing``.
"""
