"""The benchmarks run their tiny CPU mode as tests: the numbers mean nothing, the plumbing must work."""
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_dreambooth  # noqa: E402


def test_bench_dreambooth_tiny_mode_measures_every_preset(tmp_path):
    results = tmp_path / "RESULTS.md"
    rows = bench_dreambooth.main(["--steps", "3", "--warmup", "1", "--results", str(results)])
    by_name = {name: (seconds, gib, tflops) for name, seconds, gib, tflops, _ in rows}
    assert list(by_name) == list(bench_dreambooth.PRESETS)
    assert all(seconds > 0 and gib > 0 and tflops > 0 for seconds, gib, tflops in by_name.values())
    # caching takes the VAE and text encoder out of every step; LoRA needs no weight gradients
    assert by_name["cache"][2] < by_name["paper"][2]
    assert by_name["lora"][2] < by_name["cache"][2]
    assert by_name["checkpointing"][2] > by_name["cache"][2]  # the recomputed forward counts
    text = results.read_text()
    assert text.count("(tiny, 64 px)") == 4 and "| lora |" in text


def test_bench_generate_tiny_mode_times_every_setting(tmp_path):
    import bench_generate
    results = tmp_path / "RESULTS.md"
    rows, flops = bench_generate.main(["--images", "2", "--results", str(results)])
    assert [name for name, _ in rows] == list(bench_generate.TINY_SETTINGS)
    assert all(seconds > 0 for _, seconds in rows) and flops > 0
    text = results.read_text()
    assert "| one at a time |" in text and "1.00x" in text


def test_peak_tflops_comes_from_the_exact_device_name():
    assert bench_dreambooth.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989  # SXM
    assert bench_dreambooth.peak_tflops("NVIDIA H100 PCIe", None) == 756
    assert bench_dreambooth.peak_tflops("NVIDIA H100 NVL", None) == 835
    assert bench_dreambooth.peak_tflops("NVIDIA H200", None) == 989
    assert bench_dreambooth.peak_tflops("NVIDIA L40S", None) == 362
    assert bench_dreambooth.peak_tflops("CPU", None) is None
    assert bench_dreambooth.peak_tflops("NVIDIA RTX 9999", 123.0) == 123.0
    with pytest.raises(SystemExit, match="--peak_tflops"):
        bench_dreambooth.peak_tflops("NVIDIA RTX 9999", None)
