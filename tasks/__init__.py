"""SeqIO task and mixture registries (xP3, mC4, synthetic test tasks).

Import a module to register its tasks, e.g. in a gin file ``import tasks.xp3``.
Registration does no network or dataset I/O.
"""
