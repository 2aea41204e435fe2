"""The Java Card platform the cards run: the packages in ROM that a load file may import.

A release is validated against this profile (``updates.releases``: every imported package must be
in ROM at a compatible version) and the emulated card puts these packages in its registry
(``cardsim.state``), so the platform and the card cannot disagree about what a card holds.

Java Card 3.0.5 Classic (Oracle, *Java Card Platform Specification 3.0.5, Classic Edition*,
Virtual Machine Specification §4.5, export file versions) exports ``javacard.framework``,
``javacard.security`` and ``javacardx.crypto`` as 1.6; ``javacardx.apdu`` is 1.0 (unchanged since
Java Card 2.2.2). GlobalPlatform Card 2.3/2.3.1 defines ``org.globalplatform`` 1.6 (backward
compatible to 1.5).
"""

from __future__ import annotations

from gp.aids import SSD_PACKAGE_AID

JAVA_CARD_VERSION = "3.0.5 Classic"

# (package AID, (major, minor) export version, name), as a card's registry lists them.
ROM_PACKAGES: tuple[tuple[bytes, tuple[int, int], str], ...] = (
    (bytes.fromhex("A0000000620001"), (1, 0), "java.lang"),
    (bytes.fromhex("A0000000620101"), (1, 6), "javacard.framework"),
    (bytes.fromhex("A0000000620102"), (1, 6), "javacard.security"),
    (bytes.fromhex("A0000000620201"), (1, 6), "javacardx.crypto"),
    (bytes.fromhex("A0000000620209"), (1, 0), "javacardx.apdu"),
    (bytes.fromhex("A00000015100"), (1, 6), "org.globalplatform"),
    (SSD_PACKAGE_AID, (1, 0), "GP SSD package"),
)
