"""mxrc's real-time side: the cycle process and what it shares with nonrt.

The shared-memory modules are ``shm`` (segments and their layout headers), ``ring``
(records from the cycle to nonrt), ``controlblock`` (nonrt's permission to drive, read
every cycle) and ``datastore`` (the configured typed keys both sides exchange). They are
lock-free seqlocks that rely on x86-64 memory ordering, as documented in ``shm``.
"""
