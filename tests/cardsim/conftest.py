"""Fixtures for the cardsim tests: fresh cards on disk and the real CAP files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cardsim import store
from cardsim.state import new_state
from cardsim.transport import InProcessCard
from gp.cap import LoadFile
from tests.shared_data import cap_file

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
LIB_BER = "openjavacard-lib-ber.cap"
LIB_DEBUG = "openjavacard-lib-debug.cap"
SVC = "openjavacard-svc-debug.cap"
ALGTEST = "AlgTest_v1.6_supportOnly_jc212.cap"


@pytest.fixture
def load_file() -> Callable[[str], LoadFile]:
    return lambda name: LoadFile.from_path(cap_file(name))


@pytest.fixture
def make_card(tmp_path: Path) -> Callable[..., InProcessCard]:
    """A fresh card on disk (``new_state`` keyword arguments), opened in-process."""
    counter = iter(range(1000))

    def make(**kwargs: Any) -> InProcessCard:
        kwargs.setdefault("cin", bytes.fromhex("0102030405060708"))
        path = tmp_path / f"card{next(counter)}.json"
        store.save(path, new_state(**kwargs))
        return InProcessCard(path)

    return make
