"""The authors' guided-diffusion (ADM) checkpoints as the ffhq / lsun-bedroom priors (issue 27).

The reference network below is a second, independent re-creation of guided-diffusion's
``unet.py`` forward pass (``UNetModel``, ``ResBlock``, ``AttentionBlock`` with
``QKVAttentionLegacy``, ``timestep_embedding``), written from that file's structure and not
importing sjc's module. Its random weights are saved as ``.pt`` in guided-diffusion's key
layout and loaded through the registered priors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry

try:
    from host_guard import forbid_host_sync
except ImportError:  # tests/ imported as a package
    from tests.host_guard import forbid_host_sync

# Tiny: 32px, 3 levels (1, 2, 2) x 32 channels, 1 res block, attention at 16 and 8 px (ds 2, 4).
TINY = {"image_size": 32, "model_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attention_ds": (2, 4)}
HEAD_CHANNELS = 16  # 2 heads at 32 channels, 4 at 64: the legacy head order matters


# -- guided-diffusion's UNetModel, re-created ---------------------------------------------------
def gd_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GN32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class GDSeq(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, GDResBlock) else layer(x)
        return x


class GDResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, up=False, down=False):
        super().__init__()
        self.in_layers = nn.Sequential(GN32(32, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.updown = up or down
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(GN32(32, out_ch), nn.SiLU(), nn.Dropout(0.1), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def resample(self, x):
        if self.up:
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return nn.functional.avg_pool2d(x, kernel_size=2, stride=2)

    def forward(self, x, emb):
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.resample(in_rest(x)))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        scale, shift = torch.chunk(emb_out, 2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class GDAttention(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.n_heads = ch // HEAD_CHANNELS
        self.norm = GN32(32, ch)
        self.qkv = nn.Conv1d(ch, ch * 3, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)  # QKVAttentionLegacy
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class GDUNet(nn.Module):
    def __init__(self, mc, mult, nrb, attention_ds):
        super().__init__()
        emb = mc * 4
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = input_ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([GDSeq(nn.Conv2d(3, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [GDResBlock(ch, emb, int(m * mc))]
                ch = int(m * mc)
                if ds in attention_ds:
                    layers.append(GDAttention(ch))
                self.input_blocks.append(GDSeq(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(GDSeq(GDResBlock(ch, emb, ch, down=True)))
                chans.append(ch)
                ds *= 2
        self.middle_block = GDSeq(GDResBlock(ch, emb, ch), GDAttention(ch), GDResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList([])
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                layers = [GDResBlock(ch + chans.pop(), emb, int(mc * m))]
                ch = int(mc * m)
                if ds in attention_ds:
                    layers.append(GDAttention(ch))
                if level and i == nrb:
                    layers.append(GDResBlock(ch, emb, ch, up=True))
                    ds //= 2
                self.output_blocks.append(GDSeq(*layers))
        self.out = nn.Sequential(GN32(32, ch), nn.SiLU(), nn.Conv2d(input_ch, 6, 3, padding=1))

    def forward(self, x, timesteps):
        hs = []
        emb = self.time_embed(gd_timestep_embedding(timesteps, self.mc))
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def build_reference() -> GDUNet:
    torch.manual_seed(0)
    net = GDUNet(TINY["model_channels"], TINY["channel_mult"], TINY["num_res_blocks"], TINY["attention_ds"])
    with torch.no_grad():  # guided-diffusion zero-initialises some convs; random ones test more
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return net.eval()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> GDUNet:
    return build_reference()


@pytest.fixture(scope="module")
def checkpoint(reference: GDUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights as guided-diffusion saves them (a plain state dict), in float16 as a release may be."""
    path = tmp_path_factory.mktemp("adm") / "lsun_tiny.pt"
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


def build(registry, name: str, **options):
    info = registry.get("priors", name)
    return info.factory(info.options(**options), BuildContext())


@pytest.fixture(scope="module")
def prior(registry, checkpoint: Path):
    return build(registry, "ffhq", model=str(checkpoint), num_head_channels=HEAD_CHANNELS)


def fp16_rounded(reference: GDUNet) -> GDUNet:
    """The reference with the weights the file holds (rounded to float16 and back)."""
    net = build_reference()
    net.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    return net.eval()


# -- tests ------------------------------------------------------------------------------------
def test_config_read_from_the_tensors(prior) -> None:
    config = prior.unet.config
    assert (config.model_channels, config.num_res_blocks, config.channel_mult) == (32, 1, (1, 2, 2))
    assert config.attention_ds == (2, 4) and config.out_channels == 6 and config.learn_sigma
    assert config.use_scale_shift_norm and config.resblock_updown
    assert (prior.channels, prior.resolution, prior.render_resolution) == (3, 32, 32)
    assert next(prior.unet.parameters()).dtype == torch.float32  # float16 file, float32 network


def test_forward_equals_guided_diffusion(prior, reference: GDUNet) -> None:
    expected_net = fp16_rounded(reference)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 870])
    with torch.no_grad():
        expected = expected_net(x, t)
        got = prior.unet(x, t)
    assert got.shape == (2, 6, 32, 32)
    assert expected.abs().mean() > 0.1  # a real, input-dependent output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ladder_is_the_linear_schedule(prior) -> None:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(prior.sigmas.double(), ((1 - alpha_bar) / alpha_bar).sqrt(), rtol=1e-6, atol=0)
    assert abs(float(prior.sigmas[0]) - 0.0100005) < 1e-6 and 156 < float(prior.sigmas[-1]) < 158


def test_denoise_is_x_minus_sigma_eps_at_the_snapped_level(prior, reference: GDUNet) -> None:
    expected_net = fp16_rounded(reference)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32) * 2
    sigma = torch.tensor([0.5, 7.3])
    ladder = prior.sigmas.double()
    index = (sigma.double()[:, None] - ladder[None]).abs().argmin(dim=1)
    snapped64 = ladder[index].view(-1, 1, 1, 1)
    snapped = snapped64.float()
    with torch.no_grad():  # the VP scale in float64, as the ladder is, then float32
        eps = expected_net(x * (1 / torch.sqrt(1 + snapped64**2)).float(), index)[:, :3]
        expected = x - snapped * eps
        got = prior.denoise(x, sigma)
    assert index.tolist()[0] > 0 and not torch.allclose(snapped.flatten(), sigma)  # really snapped
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    one = prior.denoise(x[:1], 0.5)  # a plain number works too
    torch.testing.assert_close(one, expected[:1], atol=1e-5, rtol=1e-5)


def test_denoise_never_reads_values_back_to_the_host(prior) -> None:
    x = torch.randn(2, 3, 32, 32)
    with forbid_host_sync():
        prior.denoise(x, torch.tensor([0.3, 40.0]))
        prior.denoise(x, torch.tensor(2.0))


def test_float16_network(registry, checkpoint: Path, prior) -> None:
    """dtype = "float16" (the CUDA default) runs the torso in half precision, norms in float32."""
    half = build(registry, "ffhq", model=str(checkpoint), num_head_channels=HEAD_CHANNELS, dtype="float16")
    assert next(half.unet.parameters()).dtype == torch.float16
    x = torch.randn(2, 3, 32, 32)
    sigma = torch.tensor([0.5, 3.0])
    got, full = half.denoise(x, sigma), prior.denoise(x, sigma)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - full).abs().max() < 0.1 < (full - x).abs().mean()


def test_lsun_bedroom_and_safetensors(registry, reference: GDUNet, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bedroom.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    prior = build(registry, "lsun-bedroom", model=str(path), num_head_channels=HEAD_CHANNELS, render_resolution=16)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(prior.unet(x, torch.tensor([10])), reference(x, torch.tensor([10])), atol=1e-5, rtol=1e-5)
    assert prior.render_resolution == 16


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the authors' release: m_lsun_256
        {"resblock_updown": False, "num_res_blocks": 3, "channel_mult": (1, 2, 3, 4), "attention_ds": (2, 4, 8)},
        {"use_scale_shift_norm": False, "out_channels": 3, "model_channels": 64, "channel_mult": (1, 2), "attention_ds": (2,)},
    ],
)
def test_config_round_trip_from_shapes_alone(changes: dict) -> None:
    """Full-size layouts on the meta device (no memory): the shapes give back the config."""
    from dataclasses import replace

    from sjc_plugins.priors.adm_checkpoint import RELEASE_CONFIG, _is_release_layout, check_layout, infer_config
    from sjc_plugins.priors.adm_unet import AdmUNet

    config = replace(RELEASE_CONFIG, **changes)
    with torch.device("meta"):
        model = AdmUNet(config)
    state = model.state_dict()
    read = infer_config(state, Path("release.pt"))
    assert read == replace(config, image_size=8 * 2 ** (len(config.channel_mult) - 1))
    check_layout(model, state, Path("release.pt"))
    assert _is_release_layout(read) == (not changes)
    if not changes:  # guided-diffusion's LSUN / FFHQ 256 UNet: 552.8M parameters, 256px
        assert sum(v.numel() for v in state.values()) == 552_814_086 and read.image_size == 256


def test_describe(checkpoint: Path, reference: GDUNet) -> None:
    from sjc_plugins.priors.adm_checkpoint import describe, looks_like_adm

    assert looks_like_adm(reference.state_dict()) and not looks_like_adm({"model.diffusion_model.out.2.weight": 0})
    info = describe(checkpoint)
    assert info["kind"] == "adm" and info["resolution"] == 32 and info["channels"] == 3
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    assert info["attention_resolutions"] == [16, 8] and info["learned_sigma"] and info["dtype"] == "float16"
    assert info["release_layout"] is False


def one_line_error(registry, path: Path, **options) -> str:
    with pytest.raises(SjcError) as caught:
        build(registry, "ffhq", model=str(path), num_head_channels=HEAD_CHANNELS, **options)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert str(path) in message
    return message


class Payload:
    """A pickled object that is not a tensor: weights_only must refuse it without running anything."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_a_non_tensor_object_is_refused(registry, tmp_path: Path, capfd) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2, 2), "payload": Payload()}, path)
    message = one_line_error(registry, path)
    assert "weights_only" in message
    assert "this must never run" not in capfd.readouterr().out
    plain = tmp_path / "strings.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2, 2), "note": "hello"}, plain)
    assert "non-tensor object (str) at key 'note'" in one_line_error(registry, plain)


def test_missing_key_and_wrong_shape_name_the_key(registry, reference: GDUNet, tmp_path: Path) -> None:
    state = reference.state_dict()
    missing = {k: v for k, v in state.items() if k != "output_blocks.2.0.out_layers.3.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    assert "missing key 'output_blocks.2.0.out_layers.3.weight'" in one_line_error(registry, tmp_path / "missing.pt")
    wrong = dict(state, **{"middle_block.1.qkv.weight": torch.zeros(64 * 3, 64, 2)})
    torch.save(wrong, tmp_path / "wrong.pt")
    message = one_line_error(registry, tmp_path / "wrong.pt")
    assert "key 'middle_block.1.qkv.weight' has shape [192, 64, 2], expected [192, 64, 1]" in message
    torch.save(dict(state, extra=torch.zeros(1)), tmp_path / "extra.pt")
    assert "unexpected key 'extra'" in one_line_error(registry, tmp_path / "extra.pt")
    torch.save({"first_stage_model.weight": torch.zeros(1)}, tmp_path / "other.pt")
    assert "no key 'time_embed.0.weight'" in one_line_error(registry, tmp_path / "other.pt")
    torch.save(state, tmp_path / "good.pt")
    with pytest.raises(SjcError, match="prior.num_head_channels: 24 does not divide the 64 attention channels"):
        build(registry, "ffhq", model=str(tmp_path / "good.pt"), num_head_channels=24)
    with pytest.raises(SjcError, match="does not exist"):
        build(registry, "ffhq", model=str(tmp_path / "absent.pt"))


# -- through the CLI -------------------------------------------------------------------------
@pytest.mark.slow  # a real `sjc run` subprocess, offline
def test_cli_run_with_a_release_style_file(run_sjc, checkpoint: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f"""
name = "tiny"
steps = 3
output = "{(tmp_path / 'runs').as_posix()}"
device = "cpu"
view_every = 3
checkpoint_every = 3

[prior]
name = "ffhq"
model = "{checkpoint.as_posix()}"
num_head_channels = {HEAD_CHANNELS}
render_resolution = 16

[field]
name = "voxel"
grid_size = 12

[paas]
schedule = "annealed"

[camera]
test_frames = 2
"""
    )
    env = {"HF_HUB_OFFLINE": "1", "SJC_ALLOW_DOWNLOAD": None}
    code, out, err = run_sjc("run", str(recipe), env=env)
    assert code == 0, err
    assert "3 channels at 32x32" in out + err
    run_dir = tmp_path / "runs" / "tiny-seed0"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(math.isfinite(r["sigma"]) for r in records)
    assert list((run_dir / "views").glob("*.png"))
    code, _, err = run_sjc("validate", str(recipe), env=env)
    assert code == 0, err
    recipe.write_text(recipe.read_text().replace(checkpoint.as_posix(), (tmp_path / "gone.pt").as_posix()))
    code, _, err = run_sjc("validate", str(recipe), env=env)
    assert code == 2 and "gone.pt" in err and "does not exist" in err and "Traceback" not in err
