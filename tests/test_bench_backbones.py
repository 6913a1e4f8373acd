"""The full-size-architecture timing script runs (smoke: SD 1.5 and SDXL layouts at tiny widths)."""

from sampler.bench.backbones import SD15, SDXL, main, smoke_config


def test_smoke_run_reports_ratios_for_both_layouts(capsys):
    results = main(["--smoke", "--device", "cpu"])
    assert [r["arch"] for r in results] == ["sd15", "sdxl"]
    for r in results:
        assert r["attention_layers"] > 0 and r["plain_s_per_step"] > 0
        assert all(r[f"{n}_time_ratio"] > 0 for n in ("guided_attention", "guided_x0", "direction_hspace", "direction_noise"))


def test_smoke_configs_keep_the_block_layout():
    for cfg in (SD15, SDXL):
        small = smoke_config(cfg)
        assert small["down_block_types"] == cfg["down_block_types"] and small["up_block_types"] == cfg["up_block_types"]
        assert len(small["block_out_channels"]) == len(cfg["block_out_channels"])
