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
    assert list(by_name) == list(bench_dreambooth.PRESETS["sd21"])
    assert all(seconds > 0 and gib > 0 and tflops > 0 for seconds, gib, tflops in by_name.values())
    # caching takes the VAE and text encoder out of every step; LoRA needs no weight gradients
    assert by_name["cache"][2] < by_name["paper"][2]
    assert by_name["lora"][2] < by_name["cache"][2]
    assert by_name["checkpointing"][2] > by_name["cache"][2]  # the recomputed forward counts
    text = results.read_text()
    assert text.count("(tiny, 64 px)") == 4 and "| lora |" in text


@pytest.mark.parametrize("model", ["sdxl", "flux"])
def test_bench_dreambooth_tiny_mode_trains_lora_from_a_saved_folder(tmp_path, capsys, model):
    results = tmp_path / "RESULTS.md"
    rows = bench_dreambooth.main(["--model", model, "--steps", "2", "--warmup", "1", "--results", str(results)])
    assert "lora_nf4: skipped, diffusers quantizes with bitsandbytes only on a GPU" in capsys.readouterr().out
    by_name = {name: (seconds, gib, tflops) for name, seconds, gib, tflops, _ in rows}
    assert list(by_name) == ["lora", "lora_checkpointing"]
    assert all(seconds > 0 and gib > 0 for seconds, gib, _ in by_name.values())
    assert by_name["lora_checkpointing"][2] > by_name["lora"][2] > 0  # the recomputed forward counts
    assert f"| {model} | lora_checkpointing |" in results.read_text()


def test_the_released_architectures_have_their_parameter_counts():
    """What the GPU presets train, built on the meta device: SDXL's and FLUX.1's parts as released."""
    import torch
    counts = {}
    for model in ("sdxl", "flux"):
        pipeline = bench_dreambooth.build_random_pipeline(model, torch.float32, "meta")
        counts[model] = {name: round(sum(p.numel() for p in part.parameters()) / 1e6)
                         for name, part in pipeline.components.items() if isinstance(part, torch.nn.Module)}
    assert counts["sdxl"] == {"unet": 2567, "vae": 84, "text_encoder": 123, "text_encoder_2": 695}
    assert counts["flux"] == {"transformer": 11901, "vae": 84, "text_encoder": 123, "text_encoder_2": 4762}


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
