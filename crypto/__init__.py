"""Cryptography for Murmur: CKKS secure aggregation and site identities (leaf package).

TenSEAL and PyNaCl are imported only inside this package; everything else sees the
small ``Cipher`` interface and the errors of :mod:`crypto.errors`.
"""
