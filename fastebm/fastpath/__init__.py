"""The fast path: :class:`~fastebm.fastpath.fastpath.FastPath` (what runs, its check, switching off what
fails), the compiled whole iteration, the checks against the plain path and float64 (and of bf16 / fp16 against the
noise training carries), the agreement criterion.
"""
