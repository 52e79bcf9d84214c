"""Opening the store the settings name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_OPEN_LMDB = """
import sys
from pathlib import Path
import service.__main__
from service.config.settings import StateSettings
from service.features import FeatureConfig
from service.state.opening import open_state
open_state(StateSettings(backend="lmdb", path=Path(sys.argv[1])), FeatureConfig()).close()
print(",".join(name for name in ("redis", "hiredis") if name in sys.modules))
"""


def test_a_server_on_lmdb_never_imports_the_redis_client(tmp_path: Path) -> None:
    opened = subprocess.run(
        [sys.executable, "-c", _OPEN_LMDB, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == ""
