import json
import subprocess
import sys


def _casebook(*args):
    out = subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()


def test_env_json_reports_the_measured_cpu_roofline():
    doc = json.loads(_casebook("env", "--json")[-1])
    r = doc["cpu_roofline"]
    assert r["fp32_flops"] > 1e8 and r["mem_bandwidth"] > 1e8
    assert r["ridge_flop_per_byte"] == r["fp32_flops"] / r["mem_bandwidth"]
    assert doc["cores"] >= 1 and "torch" in doc["versions"]


def test_bench_json_is_the_last_line_and_matches_the_file(tmp_path):
    lines = _casebook("bench", "common", "--quick", "--only", "interleaved", "--no-progress",
                      "--out", str(tmp_path), "--json")
    doc = json.loads(lines[-1])
    assert [c["case"] for c in doc["cases"]] == ["interleaved"]
    on_disk = json.loads((tmp_path / "common" / "cpu" / "results.json").read_text())
    assert on_disk["cases"][0]["metrics"] == doc["cases"][0]["metrics"]
    assert any("interleaved" in line for line in lines[:-1])  # the human table came first


def test_unknown_subcommand_fails_with_usage():
    out = subprocess.run([sys.executable, "-m", "common.cli", "nope"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
