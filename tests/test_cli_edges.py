"""User errors on the command line: every subcommand's numeric options at 0, negative, nan and inf, bad
names, malformed sweep files and a bad ``REGNET_KERNELS_BACKEND`` exit non-zero with a one-line message,
never a traceback. Each case fails before any measurement starts, so the table runs in seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regnet_kernels import cli
from regnet_kernels.benchmark import sweep_records

ROOT = Path(__file__).resolve().parents[1]

GOOD = {"kind": "measurement", "model": "regnety_200mf", "provider": "eager_best", "batch": 1, "dtype": "fp32",
        "resolution": 128, "device": "CPU", "status": "ok", "ms_median": 2.0, "ms_p10": 1.9, "ms_p90": 2.1,
        "img_per_s": 500.0, "macs": 10**8, "top1": 70.3, "peak_mem_bytes": None, "weights_bytes": 10**6}

#: malformed sweep files for ``pick --from``: (name, records, message fragment)
MALFORMED = [
    ("not-an-object", [GOOD, "oops"], "record 1 is malformed: a JSON str"),
    ("no-model", [{**GOOD, "model": None}], "model is None"),
    ("batch-text", [{**GOOD, "batch": "1"}], "batch is '1'"),
    ("ms-text", [{**GOOD, "ms_median": "fast"}], "ms_median is 'fast'"),
    ("ms-missing", [{k: v for k, v in GOOD.items() if k != "ms_p90"}], "ms_p90 is None"),
    ("ms-negative", [{**GOOD, "ms_median": -1.0}], "ms_median is -1.0"),
    ("top1-text", [{**GOOD, "top1": "high"}], "top1 is 'high'"),
]


def _run(argv, capsys, monkeypatch, env=None):
    """``cli.main(argv)`` as the interpreter runs it: a SystemExit with a message prints it and exits 1."""
    monkeypatch.delenv("REGNET_KERNELS_BACKEND", raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            rc = 1
        else:
            rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


CASES = [
    # bench: every numeric option
    (["bench", "--resolution", "-8"], "--resolution: must be >= 32"),
    (["bench", "--resolution", "0"], "--resolution: must be >= 32"),
    (["bench", "--resolution", "nan"], "--resolution: expected an integer"),
    (["bench", "--resolution", "inf"], "--resolution: expected an integer"),
    (["bench", "--batch", "0"], "--batch: must be >= 1"),
    (["bench", "--batch", "-2"], "--batch: must be >= 1"),
    (["bench", "--batch", "nan"], "--batch: expected an integer"),
    (["bench", "--batch", "inf"], "--batch: expected an integer"),
    (["bench", "--reps", "0"], "--reps: must be >= 1"),
    (["bench", "--reps", "inf"], "--reps: expected an integer"),
    (["bench", "--warmup", "-1"], "--warmup: must be >= 0"),
    (["bench", "--warmup", "nan"], "--warmup: expected an integer"),
    (["bench", "--numerics-batch", "1"], "--numerics-batch: must be >= 2"),
    (["bench", "--numerics-batch", "-3"], "--numerics-batch: must be >= 2"),
    (["bench", "--numerics-resolution", "0"], "--numerics-resolution: must be >= 32"),
    (["bench", "--numerics-resolution", "nan"], "--numerics-resolution: expected an integer"),
    (["bench", "--model", "regnet_z_9000"], "unknown model 'regnet_z_9000'"),
    (["bench", "--numerics-model", "nope"], "unknown model 'nope'"),
    (["bench", "--providers", "tensorrt"], "unknown provider(s) tensorrt"),
    (["bench", "--quick", "--full"], "--quick and --full exclude each other"),
    (["bench", "--dtype", "fp8"], "--dtype: invalid choice"),
    # sweep
    (["sweep", "--batch", "0"], "--batch values must be >= 1"),
    (["sweep", "--batch", "1,-4"], "--batch values must be >= 1"),
    (["sweep", "--batch", "nan"], "--batch takes integers"),
    (["sweep", "--batch", "inf"], "--batch takes integers"),
    (["sweep", "--resolution", "0"], "--resolution: must be >= 32"),
    (["sweep", "--resolution", "-8"], "--resolution: must be >= 32"),
    (["sweep", "--resolution", "nan"], "--resolution: expected an integer"),
    (["sweep", "--reps", "0"], "--reps: must be >= 1"),
    (["sweep", "--reps", "inf"], "--reps: expected an integer"),
    (["sweep", "--warmup", "-1"], "--warmup: must be >= 0"),
    (["sweep", "--threads", "0"], "--threads: must be >= 1"),
    (["sweep", "--threads", "-2"], "--threads: must be >= 1"),
    (["sweep", "--threads", "nan"], "--threads: expected an integer"),
    (["sweep", "--device", "tpu"], "--device 'tpu'"),
    (["sweep", "--device", "cuda:x"], "--device 'cuda:x'"),
    (["sweep", "--providers", "nope"], "unknown provider(s) nope"),
    (["sweep", "--models", "regnet_z_9000"], "unknown model(s) regnet_z_9000"),
    (["sweep", "--family", "z"], "--family: invalid choice"),
    # pick
    (["pick", "--latency-ms", "nan"], "--latency-ms: must be a finite number > 0, got nan"),
    (["pick", "--latency-ms", "inf"], "--latency-ms: must be a finite number > 0, got inf"),
    (["pick", "--latency-ms", "0"], "--latency-ms: must be a finite number > 0"),
    (["pick", "--latency-ms", "-1"], "--latency-ms: must be a finite number > 0"),
    (["pick", "--latency-ms", "fast"], "--latency-ms: expected a number > 0"),
    (["pick", "--latency-ms", "1", "--memory-mb", "nan"], "--memory-mb: must be a finite number > 0"),
    (["pick", "--latency-ms", "1", "--memory-mb", "0"], "--memory-mb: must be a finite number > 0"),
    (["pick", "--latency-ms", "1", "--memory-mb=-inf"], "--memory-mb: must be a finite number > 0"),
    (["pick", "--latency-ms", "1", "--batch", "0"], "--batch: must be >= 1"),
    (["pick", "--latency-ms", "1", "--batch", "nan"], "--batch: expected an integer"),
    (["pick", "--latency-ms", "1", "--resolution", "-8"], "--resolution: must be >= 32"),
    (["pick", "--latency-ms", "1", "--reps", "0"], "--reps: must be >= 1"),
    (["pick", "--latency-ms", "1", "--threads", "0"], "--threads: must be >= 1"),
    (["pick"], "--latency-ms"),
    # check, info, the top level
    (["check", "--backend", "bogus"], "--backend: invalid choice"),
    (["nosuchcommand"], "invalid choice"),
]
if not torch.cuda.is_available():  # asking for a backend this machine cannot run
    CASES.append((["check", "--backend", "cuda"], "backend 'cuda' cannot run conv_bn_act"))


def _assert_one_line_error(rc, out, err, fragment):
    assert rc not in (0, None), (rc, out, err)
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_user_error_is_one_line(argv, fragment, capsys, monkeypatch):
    _assert_one_line_error(*_run(argv, capsys, monkeypatch), fragment)


@pytest.mark.parametrize("name,records,fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_pick_from_malformed_sweep(name, records, fragment, tmp_path, capsys, monkeypatch):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"schema": sweep_records.SCHEMA, "records": records}))
    rc, out, err = _run(["pick", "--latency-ms", "5", "--from", str(path)], capsys, monkeypatch)
    _assert_one_line_error(rc, out, err, fragment)
    assert str(path) in err


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ('{"schema": "something else", "records": []}', "is not a regnet_kernels sweep"),
    ('{"schema": "regnet_kernels.sweep/1", "records": {}}', "is not a regnet_kernels sweep"),
], ids=["not-json", "other-schema", "records-not-a-list"])
def test_pick_from_broken_file(content, fragment, tmp_path, capsys, monkeypatch):
    path = tmp_path / "sweep.json"
    path.write_text(content)
    _assert_one_line_error(*_run(["pick", "--latency-ms", "5", "--from", str(path)], capsys, monkeypatch), fragment)
    missing = tmp_path / "missing.json"
    _assert_one_line_error(*_run(["pick", "--latency-ms", "5", "--from", str(missing)], capsys, monkeypatch),
                           "cannot read sweep JSON")


def test_pick_from_well_formed_sweep_still_answers(tmp_path, capsys, monkeypatch):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"schema": sweep_records.SCHEMA, "records": [GOOD, {"kind": "note", "x": 1}]}))
    rc, out, err = _run(["pick", "--latency-ms", "5", "--from", str(path)], capsys, monkeypatch)
    assert rc == 0 and "regnety_200mf" in out and "Traceback" not in err


@pytest.mark.parametrize("argv", [["info"], ["check"], ["bench"], ["sweep"], ["pick", "--latency-ms", "1"]],
                         ids=lambda a: a[0])
def test_bad_backend_env_for_every_subcommand(argv, capsys, monkeypatch):
    rc, out, err = _run(argv, capsys, monkeypatch, env={"REGNET_KERNELS_BACKEND": "tensorrt"})
    _assert_one_line_error(rc, out, err, "REGNET_KERNELS_BACKEND='tensorrt' is not a backend")


def test_errors_end_to_end_without_traceback(tmp_path):
    """The same, through the interpreter (``python -m regnet_kernels``), as a user sees it."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": sweep_records.SCHEMA, "records": [{**GOOD, "ms_median": "x"}]}))
    base = dict(os.environ, PYTHONPATH=str(ROOT))
    base.pop("REGNET_KERNELS_BACKEND", None)
    for argv, env, fragment in [
        (["bench", "--resolution", "-8"], {}, "must be >= 32"),
        (["pick", "--latency-ms", "1", "--from", str(bad)], {}, "ms_median is 'x'"),
        (["info"], {"REGNET_KERNELS_BACKEND": "bogus"}, "is not a backend"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "regnet_kernels", *argv], cwd=ROOT, env={**base, **env},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0, (argv, proc.stdout, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
