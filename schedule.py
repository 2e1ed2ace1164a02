"""
Noise levels and step plans.
"""


def warp(level, shift=5.0):
    """The shift warp w(s) = k s / (1 + (k - 1) s): spends more of a schedule at high noise."""
    return shift * level / (1 + (shift - 1) * level)
