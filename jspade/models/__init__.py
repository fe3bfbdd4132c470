"""The networks (SPADE and TSIT generators, discriminators, style encoder, VGG, Inception, the
label segmenter) and SPADE's losses. Importing any of them sets Jittor up first (jspade.runtime)."""
import jspade.runtime  # noqa: F401
