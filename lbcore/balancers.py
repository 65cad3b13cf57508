"""The public path of the balancing algorithms (``lbcore.core.balancers``): ``create``,
``available``, ``builtin`` and the algorithm classes."""

from lbcore.core.balancers import *  # noqa: F403
from lbcore.core.balancers import __all__ as __all__
