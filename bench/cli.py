"""What the benchmark scripts' command lines share.

Bad arguments get nat-ha's convention: one line on stderr and exit code 2, not
argparse's usage block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


class BenchParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<script>: error: <message>``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{Path(self.prog).stem}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
