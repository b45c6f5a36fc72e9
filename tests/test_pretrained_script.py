"""benchmarks/pretrained_gpu.py (the lead's GPU run of issue 14) runs end to end at tiny
sizes on the CPU: write, load in bf16, compare with transformers, cache into a store."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrained_gpu.py"


def test_tiny_run(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--models", "tiny-mamba2,tiny-pythia", "--n", "3", "--seq-len", "16",
         "--token-budget", "32", "--no-scan-check", "--json", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())["results"]
    for name in ("tiny-mamba2", "tiny-pythia"):
        assert result[name]["check"]["rel_err_vs_hf_same_dtype"] < 5e-2
        assert result[name]["cache"][0]["tokens"] == 48 and result[name]["cache"][0]["tokens_per_second"] > 0
    assert result["tiny-mamba2"]["cache"][0]["positions"] == "all"
