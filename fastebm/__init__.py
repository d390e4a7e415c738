"""fastebm: training energy-based image models the M-EBM / M-JEM way (Yang & Ji, "M-EBM: Towards
Understanding the Manifolds of Energy-Based Models").

Sign convention, used everywhere in this package: E(x) is the *energy*; low energy = likely,
p_theta(x) ∝ exp(-E_theta(x)), so log p(x) = -E(x) + const.

The Triton kernels sit in the repository's top-level ``kernels/`` folder and install as ``fastebm.kernels``
(pyproject.toml's ``package-dir``). Importing this package from a source checkout that is not installed
in editable mode raises ImportError: its ``fastebm/`` folder shadows any installed copy and has no kernels.
"""
from importlib.util import find_spec as _find_spec

__version__ = "0.2.0"

# A checkout's fastebm/ imported without the editable install's mapping would fail later with a bare
# "No module named 'fastebm.kernels'": say here what is missing and how to get it.
if _find_spec(__name__ + ".kernels") is None:
    raise ImportError(f"fastebm.kernels is not installed for the fastebm at {__path__[0]}: in a source checkout run "
                      "`pip install -e .` (kernels/ then maps to fastebm.kernels), or run from outside the checkout")
