"""fastebm: training energy-based image models the M-EBM / M-JEM way (Yang & Ji, "M-EBM: Towards
Understanding the Manifolds of Energy-Based Models").

Sign convention, used everywhere in this package: E(x) is the *energy*; low energy = likely,
p_theta(x) ∝ exp(-E_theta(x)), so log p(x) = -E(x) + const.
"""

__version__ = "0.2.0"
