"""jspade: SPADE / GauGAN semantic image synthesis (Park et al., CVPR 2019) in Jittor.

Importing the package imports no Jittor (a script can check its arguments first). Jittor is set up by
`jspade.runtime` (device, silenced log lines), which every module using Jittor imports before it."""

__version__ = "0.1.0"
