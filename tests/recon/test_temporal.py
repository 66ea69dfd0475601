"""TFMQ-DM's temporal information block (recon/temporal.py)."""
from __future__ import annotations

import pytest
import torch

from edadm import CalibConfig, QuantConfig, load, quantize
from edadm.errors import EdadmError
from edadm.model.families import get_denoiser
from edadm.model.pipelines import build_pipeline
from edadm.recipes import resolve
from edadm.recon.temporal import temporal_block, temporal_rows, unsupported_reason


def _hooked_features(unet, x, t, **kw):
    """Every time_emb_proj output of a real forward pass, by module name."""
    outs, hooks = {}, []
    for name, m in unet.named_modules():
        if name.endswith(".time_emb_proj"):
            hooks.append(m.register_forward_hook(lambda mod, a, out, _n=name: outs.setdefault(_n, out.detach())))
    try:
        with torch.no_grad():
            unet(x, t, **kw)
    finally:
        for h in hooks:
            h.remove()
    return outs


@pytest.mark.parametrize("kind", ["unconditional", "class-conditional", "sd-v1-4"])
def test_block_features_are_what_the_forward_pass_feeds_the_resblocks(kind, make_tiny_unet):
    torch.manual_seed(0)
    kw = {}
    if kind == "unconditional":
        unet = make_tiny_unet()
    elif kind == "class-conditional":
        from diffusers import UNet2DModel

        from edadm.zoo.models import digits_ddpm_unet_config
        unet = UNet2DModel(**{**digits_ddpm_unet_config(), "num_class_embeds": 11}).eval()
    else:
        unet = get_denoiser(build_pipeline("sd-v1-4", small=True)).eval()
        kw["encoder_hidden_states"] = torch.randn(3, 4, unet.config.cross_attention_dim)
    assert unsupported_reason(unet) is None
    block = temporal_block(unet)
    timesteps = [981, 500, 1]
    t_emb, labels = temporal_rows(unet, timesteps)
    if kind == "class-conditional":
        assert labels is not None and t_emb.shape[0] == 3 * 11
        pick = torch.tensor([0 * 11 + 4, 1 * 11 + 10, 2 * 11 + 0])  # (t, class) rows 981/4, 500/10, 1/0
        kw["class_labels"] = labels[pick]
    else:
        assert labels is None and t_emb.shape[0] == 3
        pick = torch.arange(3)
    size = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    x = torch.randn(3, unet.config.in_channels, size, size)
    seen = _hooked_features(unet, x, torch.tensor(timesteps), **kw)
    with torch.no_grad():
        mine = block.features(unet, t_emb, labels)
    assert sorted(n for n, _, _ in block.projections) == sorted(seen)
    for (name, _, _), f in zip(block.projections, mine):
        torch.testing.assert_close(f[pick], seen[name], rtol=1e-5, atol=1e-6)


def test_denoisers_without_the_modelled_path_are_named():
    dit = get_denoiser(build_pipeline("dit-xl-2-256", small=True))
    assert "time_proj" in unsupported_reason(dit) or "time_embedding" in unsupported_reason(dit)
    with pytest.raises(EdadmError, match="temporal reconstruction"):
        temporal_block(dit)


def test_temporal_recon_needs_the_joint_reconstruction():
    with pytest.raises(EdadmError, match="joint block reconstruction.*two-stage"):
        resolve(QuantConfig(method="qdiffusion", weight_bits=4, recon={"temporal": True}))
    with pytest.raises(EdadmError, match="does not reconstruct"):
        resolve(QuantConfig(method="naive", weight_bits=4, recon={"temporal": True}))


def test_quantize_reconstructs_the_temporal_block_first_and_the_blocks_leave_it_alone(tiny_pipe_dir, monkeypatch):
    from edadm.recon import engine

    calls = []
    real = engine._param_groups

    def spy(qlayers, act_qs, cfg, round_lr, learn_act, dev):
        calls.append(({id(m) for m in qlayers if id(m) in round_lr}, {id(q) for q in act_qs} if learn_act else set()))
        return real(qlayers, act_qs, cfg, round_lr, learn_act, dev)

    monkeypatch.setattr(engine, "_param_groups", spy)
    calib = CalibConfig(num_samples=16, num_trajectories=16, batch_size=16)
    cfg = QuantConfig(method="eda-dm-plus", weight_bits=4, act_bits=8, calib=calib,
                      recon={"iters": 10, "batch_size": 8, "temporal": True})
    q = quantize(load(tiny_pipe_dir, device="cpu"), cfg, progress=False)
    logs = q.report.recon
    assert logs[0]["kind"] == "temporal" and logs[0]["after"] < logs[0]["before"]
    block = temporal_block(q.unet)
    names = {n for n, _, _ in block.projections}
    assert {"time_embedding.linear_1", "time_embedding.linear_2"} <= set(block.layers) and names <= set(block.layers)
    layers = [q.unet.get_submodule(n) for n in block.layers]
    mine = {id(m) for m in layers}
    mine_qs = {id(x) for m in layers for x in m.modules()}
    # the temporal stage learned the block's rounding (W4: AdaRound) and its step sizes ...
    assert calls[0][0] == mine and calls[0][1] and calls[0][1] <= mine_qs
    # ... and no block unit after it touched them; the ResBlocks are still reconstructed
    assert len(calls) == len(logs) and all(not (r & mine) and not (a & mine_qs) for r, a in calls[1:])
    assert not any(u["name"].startswith("time_embedding") for u in logs[1:])
    assert any(".resnets." in u["name"] for u in logs[1:])
