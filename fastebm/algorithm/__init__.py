"""Algorithm 1's pieces: the energy function (WRN), SGLD (Eq. 3), the replay buffer, the loss (Eq. 8), the
optimizer update, and :class:`~fastebm.algorithm.algorithm1.Algorithm1`, one iteration over them.
"""
