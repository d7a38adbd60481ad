"""streamlearn.core imports no Faust, aiokafka or Kafka, however deep its imports go; of streamlearn, only
``streamlearn.models`` (River)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("faust", "aiokafka", "kafka", "mode", "confluent_kafka", "rocksdict")


def test_the_core_imports_nothing_of_kafka_or_faust():
    probe = (
        "import importlib, pkgutil, sys\n"
        "import streamlearn.core as core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'streamlearn.core.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "outside = sorted(m for m in sys.modules if m.startswith('streamlearn.') and not m.startswith(('streamlearn.core', 'streamlearn.models')))\n"
        "print(len(names), bad, outside)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) >= 2, "the probe found no modules in streamlearn.core"
    assert out[1].strip() == "[] []", f"streamlearn.core pulls in (Kafka side, then streamlearn outside core): {out[1]}"
