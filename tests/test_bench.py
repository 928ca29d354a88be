"""The benchmark command runs and reports sane figures; no timing is asserted (shared machines)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from litlab import bench, config as config_lib
from litlab.configs import quickstart
from litlab.models import vit


@pytest.mark.parametrize("conditioning,width", [("cross", 64), ("prefix", 64), ("pooled", 64), ("cross", 16)])
def test_analytic_step_flops_match_xla(conditioning, width):
    """The formula in bench.step_flops against XLA's cost_analysis of the real train step: XLA
    also counts elementwise work, so it may be a little higher, never lower. The smoke encoder
    is 32 wide: width 64 folds the image projection into the K/V maps, width 16 does not."""
    c = config_lib.override(quickstart.get_config("smoke"), {
        "decoder.conditioning": conditioning, "decoder.width": width, "decoder.num_heads": 2,
        "decoder.mlp_dim": 256, "decoder.depth": 2, "matmul_precision": "float32"})
    B, L = 8, c.data.max_len
    step, state, batch = bench.train_step_setup(c, B, 1000)
    n, d = batch["image_tokens"].shape[1:]
    _, xla = bench.compile_with_flops(jax.jit(step), state, batch, jax.random.PRNGKey(0))
    ours = bench.step_flops(batch=B, text_len=L - 1, image_tokens=n, image_width=d, width=width, depth=2,
                            mlp_dim=256, vocab=1000, conditioning=conditioning)
    assert bench.config_flops(c, batch, 1000) == ours
    assert 0.8 < ours / xla <= 1.0, (ours, xla)


def test_mfu_suite_runs_and_reports_sane_values(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["mfu", "--quick", "--json", str(out)])
    mfu = json.loads(out.read_text())["mfu"]
    assert mfu["peaks"]["f32_gflops"] > 0 and mfu["peaks"]["bf16_gflops"] > 0
    for prec in ("float32", "bfloat16"):
        r = mfu[prec]
        assert r["step_ms"] > 0 and r["step_ms_p10_p90"][0] <= r["step_ms"] <= r["step_ms_p10_p90"][1]
        assert 0.8 < r["analytic_over_xla"] <= 1.0
        assert 0 < r["fraction_of_peak"] < 2
    assert mfu["bf16_over_f32_speed"] > 0


def test_unknown_suite_and_unwritable_json_are_named_before_measuring(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["nope"])
    assert "unknown suite(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["mfu", "--json", str(tmp_path / "missing" / "b.json")])
    assert "does not exist; create it first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["mfu", "--doc", str(tmp_path / "missing" / "b.md")])
    assert "--doc" in capsys.readouterr().err


def test_bf16_step_multiplies_in_bf16_and_follows_the_f32_loss_curve():
    """bfloat16 must cover the backward products too (before models/matmul.py only the 30 forward
    dots of 89 did), and train like float32: same batch, same init, loss curves within 3%."""
    curves, dots = {}, {}
    for prec in ("float32", "bfloat16"):
        c = config_lib.override(quickstart.get_config("smoke"), {
            "decoder.width": 64, "decoder.num_heads": 2, "decoder.mlp_dim": 128, "decoder.depth": 2,
            "matmul_precision": prec, "optimizer.lr": 3e-3, "schedule.warmup_steps": 2})
        step, state, batch = bench.train_step_setup(c, 8, 1000)
        fn = jax.jit(step)
        dots[prec] = bench.dot_dtypes(fn.lower(state, batch, jax.random.PRNGKey(0)).compile().as_text())
        curves[prec] = []
        for _ in range(40):
            state, m = fn(state, batch, jax.random.PRNGKey(0))
            curves[prec].append(float(m["loss"]))
    assert set(dots["float32"]) == {"f32 x f32"}
    # Forward and input-gradient products in bf16; on CPU the weight gradients stay f32
    # (models/matmul.py says why). The products on the frozen features, the image K and V of each
    # layer (the projection is folded into them), need no input gradient: forward and weight
    # gradient only. Every other product has all three.
    total, low = sum(dots["bfloat16"].values()), dots["bfloat16"].get("bf16 x bf16", 0)
    on_features = 2 * 2 * c.decoder.depth
    want = 2 * (total - on_features) / 3 + on_features / 2 if jax.default_backend() == "cpu" else total
    assert low >= want, dots["bfloat16"]
    f32, bf16 = np.asarray(curves["float32"]), np.asarray(curves["bfloat16"])
    assert f32[-1] < 0.8 * f32[0]  # it learns the repeated batch
    np.testing.assert_allclose(bf16, f32, rtol=0.03)


def test_scaling_and_memory_suites_write_the_benchmark_doc(tmp_path):
    doc, js = tmp_path / "benchmarks.md", tmp_path / "b.json"
    # 3 GB resident here must not count: a forked child's ru_maxrss starts at its parent's size.
    ballast = np.ones(3 * 2 ** 30 // 8)
    bench.main(["scaling", "memory", "--quick", "--doc", str(doc), "--json", str(js)])
    del ballast
    res = json.loads(js.read_text())
    rows = res["scaling"]["rows"]
    assert [(r["axis"], r["value"]) for r in rows] == [
        ("batch", 8), ("batch", 32), ("depth", 1), ("depth", 2), ("image_tokens", 4), ("image_tokens", 16),
        ("text_tokens", 17), ("text_tokens", 33)]  # smoke encoder: patch 16 on 32 and 64 px
    for r in rows:
        assert r["step_ms"] > 0 and r["gflops"] > 0
        assert r["step_ms_p10_p90"][0] <= r["step_ms"] <= r["step_ms_p10_p90"][1]
    assert 0.1 < res["memory"]["peak_rss_gb"] < 2.5  # the smoke run alone: about 1.1 GB
    text = doc.read_text()
    assert "| cpu | cores |" in text and "## scaling" in text and "## memory" in text
    assert "peak_rss_gb" in text and "| depth | 2 |" in text
    assert (tmp_path / "benchmarks_scaling.svg").read_text().lstrip().startswith("<svg")


def test_train_suite_reports_the_cache_speedup_in_both_settings(tmp_path):
    """Shipped-encoder and paper-setting (ViT-B/16 at 224 px; smoke encoder under --quick) rows,
    each ratio computed from the rows beside it."""
    js = tmp_path / "b.json"
    bench.main(["train", "--quick", "--json", str(js)])
    t = json.loads(js.read_text())["train"]
    for name in ("cached_bf16", "encoder_in_loop_bf16", "cached_f32", "paper_cached_bf16", "paper_encoder_in_loop_bf16"):
        assert t[f"{name}_steps_per_s"] > 0, name
    assert t["paper_cache_speedup"] == round(t["paper_cached_bf16_steps_per_s"] / t["paper_encoder_in_loop_bf16_steps_per_s"], 2)
    assert t["cache_speedup"] == round(t["cached_bf16_steps_per_s"] / t["encoder_in_loop_bf16_steps_per_s"], 2)
    ratio = (t["paper_gflop_encoder_forward"] + t["paper_gflop_decoder_step"]) / t["paper_gflop_decoder_step"]
    assert t["paper_flop_ratio"] == pytest.approx(ratio, rel=0.02) and t["paper_flop_ratio"] > 1


def test_vit_forward_flops_match_xla():
    """The analytic ViT forward count (the cache's FLOP bound) against XLA's own count, which also
    counts the elementwise work the formula leaves out."""
    cfg = dict(patch_size=(8, 8), width=64, depth=2, mlp_dim=256, num_heads=4, posemb="learn", pool_type="gap")
    model = vit.Model(**cfg)
    x = jnp.zeros((2, 64, 64, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, xla = bench.compile_with_flops(jax.jit(lambda p, x: model.apply({"params": p}, x)), params, x)
    assert 0.8 < 2 * bench.vit_forward_flops(cfg, 64) / xla <= 1.0
    assert bench.vit_forward_flops(bench.VIT_B16, 224) == pytest.approx(34.9e9, rel=0.01)  # ViT-B/16: 17.5 GMACs


def test_decode_suite_compares_cached_and_uncached_decoding_per_precision():
    out = bench.bench_decode(batch_sizes=(2,), new_tokens=4, min_seconds=0.0, conditionings=("cross",))
    for prec in ("float32", "bfloat16"):
        row = out[f"cross_{prec}_batch2"]
        assert row["cached_tokens_per_s"] > 0 and row["uncached_tokens_per_s"] > 0
        assert row["cached_over_uncached"] == round(row["cached_tokens_per_s"] / row["uncached_tokens_per_s"], 2)
    assert out["cross_float32_batch2"]["same_tokens"]  # the KV cache changes nothing in float32
    assert out["cross_float32_batch2"]["tokens_agree"] == 1.0
    assert 0.0 <= out["cross_bfloat16_batch2"]["tokens_agree"] <= 1.0


def test_big_vision_suite_is_skipped_without_a_checkout_and_times_its_decoder_with_one(tmp_path, monkeypatch):
    """Without a checkout it says how to give one; with one (here a stand-in `cappa.Decoder`
    with big_vision's signature, written by the test) both steps are timed and counted."""
    monkeypatch.delenv("BIG_VISION_DIR", raising=False)
    assert "--big_vision DIR" in bench.bench_big_vision(checkout=str(tmp_path / "absent"))["skipped"]
    pkg = tmp_path / "bv" / "big_vision" / "models" / "proj" / "cappa"
    pkg.mkdir(parents=True)
    (pkg / "cappa.py").write_text(
        "import flax.linen as nn\n"
        "class Decoder(nn.Module):\n"
        "    emb_dim: int; mlp_dim: int; num_heads: int; num_layers: int; output_vocab_size: int\n"
        "    @nn.compact\n"
        "    def __call__(self, encoded, targets, pos_emb, decoder_mask=None, deterministic=True):\n"
        "        y = nn.Embed(self.output_vocab_size, self.emb_dim)(targets) + pos_emb\n"
        "        y = y + nn.Dense(self.emb_dim)(encoded.mean(1, keepdims=True))\n"
        "        return nn.Dense(self.output_vocab_size)(y)\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.startswith("big_vision")]:
        monkeypatch.delitem(sys.modules, name)
    js = tmp_path / "b.json"
    bench.main(["big_vision", "--quick", "--big_vision", str(tmp_path / "bv"), "--json", str(js)])
    res = json.loads(js.read_text())["big_vision"]
    for name in ("litlab", "big_vision"):
        assert res[f"{name}_step_ms"] > 0 and res[f"{name}_xla_gflop"] > 0
    # The stand-in has no attention: it must count fewer FLOPs than litlab's decoder.
    assert res["big_vision_xla_gflop"] < res["litlab_xla_gflop"]
    assert res["litlab_speed_over_big_vision"] > 0
    for name in [m for m in sys.modules if m.startswith("big_vision")]:
        del sys.modules[name]


def test_alternate_timing_interleaves_runners_and_drops_the_compiling_round():
    calls = []

    def runner(name):
        def run(state):
            calls.append(name)
            return state + 1, jnp.zeros(())
        return run

    states = {"a": 0, "b": 10}
    stats = bench._time_alternately({"a": runner("a"), "b": runner("b")}, states, repeats=3)
    assert calls == ["a", "b"] * 4  # one untimed round, then 3 timed ones, each runner in turn
    assert states == {"a": 4, "b": 14}  # the (donated) states are threaded through
    assert set(stats) == {"a", "b"}
    assert all(0 <= s["p10"] <= s["median"] <= s["p90"] for s in stats.values())
