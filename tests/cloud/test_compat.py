"""The torchvision import guard."""

from __future__ import annotations

import subprocess
import sys


def test_import_torchvision_gives_the_pure_python_models_and_is_idempotent():
    from asymfuse.cloud.compat import import_torchvision

    tv = import_torchvision()
    assert callable(tv.models.mobilenet_v2)
    assert import_torchvision() is tv


def test_guard_works_in_a_fresh_interpreter():
    code = ("from asymfuse.cloud.compat import import_torchvision;"
            "tv = import_torchvision(); m = tv.models.shufflenet_v2_x1_0(weights=None);"
            "print(type(m).__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ShuffleNetV2"
