"""``python -m bench --profile``'s pieces: a bench worker writing its Spark event log, and the
profile read from it (jobs, rows, shuffle bytes and time per step of the timed run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import profile
from bench.datasets import ensure_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_a_worker_with_an_event_log_gives_its_profile(tmp_path):
    data, _ = ensure_dataset(tmp_path / "cache", 400, parts=1)
    events = tmp_path / "events"
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "bench.worker", "validate:products"]
    command += ["--batch", str(data.root), "--work", str(tmp_path / "work")]
    command += ["--runs", "1", "--warmups", "0", "--out", str(out)]
    env = {
        **os.environ,
        "SPARK_EVENT_LOG_DIR": str(events),
        "SPARK_MASTER": "local[1]",
        "GX_ANALYTICS_ENABLED": "false",
    }
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    result = json.loads(out.read_text())

    found = profile.profile_task(events, result)

    assert found["jvm_start_s"] > 0
    assert set(found["steps"]) == {"read", "expectations", "stage"}
    read, expectations, stage = (found["steps"][name] for name in ("read", "expectations", "stage"))
    assert read["spark_jobs"] >= 1
    assert stage["spark_jobs"] >= 1
    # the suite's metrics are GX's own Spark jobs, started while the expectations step ran
    # (products: its row rules in one aggregate, the row count, the key's uniqueness)
    assert found["by_origin"]["great_expectations"]["jobs"] >= 3
    assert expectations["spark_jobs"] >= found["by_origin"]["great_expectations"]["jobs"]
    assert found["spark_jobs"] == sum(s["spark_jobs"] for s in found["steps"].values())
    assert 0 < found["spark_busy_s"] <= found["wall_s"]
    # the products files were parsed once (every row), then GX read the cache
    assert [j["input_rows"] for j in found["jobs"] if j.get("input_rows") == data.products]
    staged = [j for j in found["jobs"] if j.get("output_rows")]
    assert [j["output_rows"] for j in staged] == [data.products]
    text = profile.render("validate:products", found)
    assert "step expectations:" in text
    assert "great_expectations" in text
