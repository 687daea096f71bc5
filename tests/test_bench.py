"""The benchmark runs the engine's real step for each stack and reports ratios (no timing assertions)."""

from click.testing import CliRunner

from kdzoo.cli import main


def test_bench_table_has_every_variant(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--teacher",
            "test_resnet",
            "--student",
            "test_resnet",
            "--methods",
            "kd,kd+at+rkd",
            "--batch",
            "8",
            "--rounds",
            "2",
            "--steps",
            "1",
            "--options",
            "channels_last,bf16",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("floor", "student only", "kdzoo kd", "kdzoo kd+at+rkd", "kdzoo kd [channels_last]", "kdzoo kd [bf16]"):
        assert f"| {name} |" in result.output
    import json

    report = json.loads(out.read_text())
    assert report["results"]["floor"]["ratio"] == 1.0
    assert all(r["step_ms"] > 0 for r in report["results"].values())
