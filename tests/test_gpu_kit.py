"""The GPU kit (scripts/gpu_check.sh): its dry run executes every step's command at tiny sizes here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_needs_an_outdir():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "kit"
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--tune",
                        "--budget", "400"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    # the device tool brings back at most 8 files of at most 16 MiB, no deeper than OUTDIR/a/b
    assert len(files) <= 8 and all((out / f).is_file() and (out / f).stat().st_size < 16 * 2**20 for f in files)
    for name in ("summary.txt", "kit.log", "env.json", "smoke.json", "bench.json", "profile.json", "tests.xml",
                 "tuned.json"):
        assert name in files, (name, files)
    summary = (out / "summary.txt").read_text()
    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke and all(rec["ok"] for rec in smoke), smoke
    assert "tests: " in summary and "passed" in summary
    bench = json.loads((out / "bench.json").read_text())
    timed = [rec for rec in bench["records"] if rec.get("kind") == "measurement" and rec.get("status") == "ok"]
    assert timed, "the dry run timed nothing"
    tuned = json.loads((out / "tuned.json").read_text())  # --tune: the sweep ran (timings meaningless here)
    assert tuned["_source"].startswith("DRY RUN") and isinstance(tuned["entries"], dict)
    assert any(c["status"] == "ok" for rec in tuned["shapes"] for c in rec.get("candidates", [])), tuned
    prof = json.loads((out / "profile.json").read_text())
    assert prof["infer"]["providers"]["eager_nhwc"]["status"] == "ok"
