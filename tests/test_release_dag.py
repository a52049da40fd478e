"""The release DAG under Airflow (``airflow dags test``): Params from the trigger's conf, the extra
benchmark from the ``release_benchmarks`` Variable, the folder and the asset event at the end."""

from __future__ import annotations

import json

import pytest

from infinisynth.storage import Store
from tests.test_release import DAY1, USER_ITEM, plant

pytestmark = pytest.mark.slow


def test_the_release_dag_builds_a_release_for_a_date_range(airflow_home, tmp_path):
    store = Store(f"file://{tmp_path / 'data'}")
    plant(store)
    bench = tmp_path / "mine.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"task_id": ["mine/7"], "question": [USER_ITEM]}), bench)
    variable = json.dumps([{"url": str(bench), "text_field": "question", "id_field": "task_id", "name": "mine"}])
    output = airflow_home.dags_test(
        "release",
        DAY1,
        {
            "storage_root": store.root_url,
            "start_date": DAY1,
            "end_date": DAY1,
            "version": "v1",
            "mixes": ["50/50"],
            "quality_thresholds": [7],
        },
        extra_env={"AIRFLOW_VAR_RELEASE_BENCHMARKS": variable},
    )
    assert "export_release" in output
    folder = tmp_path / "data" / "releases" / "v1"
    report = json.loads((folder / "report.json").read_text())
    assert report["rows"] == 9 and report["start_date"] == DAY1 and report["end_date"] == DAY1
    assert "mine" in report["decontamination"]["benchmarks"]
    assert {r["id"]: r["item"] for r in report["dropped_rows"] if r.get("benchmark") == "mine"} == {"user-bench": "mine/7"}
    assert sorted(v["name"] for v in report["variants"]) == ["lint_unfiltered", "mix_50_50", "quality_7"]
    assert (folder / "README.md").exists() and (folder / "sft_config.yaml").exists()
