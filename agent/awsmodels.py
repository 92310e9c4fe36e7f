"""One shared botocore session per process (clients made from it share loaded data)."""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def botocore_session() -> Any:
    import botocore.session

    return botocore.session.get_session()
