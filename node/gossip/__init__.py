"""The learning algorithm's gossip: compressors and quantisation, the CHOCO step
(``choco``), its step size and guard, and compressed gradient tracking (``tracking``)."""
