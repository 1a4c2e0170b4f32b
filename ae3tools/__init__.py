"""ae3tools: build, verify and flash OpenMV AE3 release artifacts.

Comments cite the team's research notes by file and section (`ae3-bootloader.md §7`,
`spec §7`, `romfs §6`): docs/sources.md says what each section covers and which
upstream sources (exact commits) it was read from.
"""

__version__ = "0.1.0"
