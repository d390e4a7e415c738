"""Input and output every wing uses: checkpoint files (atomic writes, safe loading), progress lines on
stderr, NVTX ranges for Nsight Systems.
"""
