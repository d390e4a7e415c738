"""The fast path: :class:`~fastebm.fastpath.fastpath.fastpath.FastPath` (what runs, its check, switching off what
fails), the compiled whole iteration, the checks against the plain path and float64, the agreement criterion.
"""
