"""Importing the Python API prints nothing (issue 20): with the [spark] extra installed, pandera imports
pyspark.pandas, whose pandas-version FutureWarning used to greet every `import propensity`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_packages_prints_no_warning():
    # -W default shows every warning once, as a user's interpreter would; pandera is imported for real.
    code = "import feedback_etl, propensity, rm_train"
    result = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
