"""Releases: the verified bundle (manifest, members, signature), the archive reader that
refuses hostile zips, OpenMV's own release zips, and Ed25519 signing.

Built on `ae3tools.formats`; nothing here does device I/O.
"""
