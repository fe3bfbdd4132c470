"""jspade: SPADE / GauGAN semantic image synthesis (Park et al., CVPR 2019) in Jittor."""
from jspade.runtime import jt  # noqa: F401  (configures Jittor before any other import of it)

__version__ = "0.1.0"
