"""fastebm: training energy-based image models the M-EBM / M-JEM way (Yang & Ji, "M-EBM: Towards
Understanding the Manifolds of Energy-Based Models").

Sign convention, used everywhere in this package: E(x) is the *energy*; low energy = likely,
p_theta(x) ∝ exp(-E_theta(x)), so log p(x) = -E(x) + const.
"""
import os as _os

__version__ = "0.1.0"

# In a source checkout that was not pip-installed (PYTHONPATH=.), the top-level ``kernels/`` folder
# is not yet importable as ``fastebm.kernels``; add it to this package's search path.  An installed
# package (pip install -e . / pip install .) maps it through setup.py's package_dir instead.
_kernels_parent = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_kernels_parent, "kernels", "__init__.py")) and not _os.path.isdir(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "kernels")
):
    __path__.append(_kernels_parent)  # noqa: F821  (module attribute of a package)
