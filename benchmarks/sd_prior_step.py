"""Cost of one PAAS call through the stable-diffusion prior, on a tiny SD model, on the CPU.

Usage: python benchmarks/sd_prior_step.py [--threads 1] [--repeats 10] [--noises 1 4]
Builds the tests' tiny SD folder in a temporary directory, loads it through the registry
(the real from_pretrained path), and times ``paas_gradient`` (K noises -> one batched
UNet call of 2K with guidance, K without), plus text conditioning and VAE decoding.
Prints one JSON object (median seconds); ``bare_unet_seconds`` is the same-sized UNet call
alone, timed interleaved with the PAAS calls, so the difference is the prior's overhead. The tiny UNet is a stand-in: the figures measure
the prior's own overhead (snapping, scaling, guidance batching) around a small network,
not Stable Diffusion's real cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    return interleaved_medians([fn], repeats, warmup)[0]


def interleaved_medians(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median time of each function, calls alternated so that machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--noises", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--guidance", type=float, nargs="+", default=[100.0, 1.0])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "tests"))

    from sjc_core.contracts import BuildContext, View
    from sjc_core.plugins import load_registry
    from sjc_core.training.paas import paas_gradient
    from tiny_models import SD_LATENT_SIZE, build_sd_folder

    results: dict[str, object] = {
        "device": "cpu",
        "threads": args.threads,
        "latent": [4, SD_LATENT_SIZE, SD_LATENT_SIZE],
        "unet": "tiny UNet2DConditionModel (32, 64) channels, 1 layer per block, cross-attention 32",
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_sd_folder(Path(tmp) / "tiny-sd")
        info = load_registry(warn=lambda message: None).get("priors", "stable-diffusion")
        for scale in args.guidance:
            start = time.perf_counter()
            prior = info.factory(info.options(model=str(folder), prompt="a burger", guidance_scale=scale), BuildContext())
            load_seconds = time.perf_counter() - start
            start = time.perf_counter()
            cond = prior.condition(View(label="front"))
            condition_seconds = time.perf_counter() - start
            y = torch.randn(1, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)
            generator = torch.Generator().manual_seed(0)
            for k in args.noises:
                unet_batch = 2 * k if scale != 1.0 else k
                x_in = torch.randn(unet_batch, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)
                t_in = torch.full((unet_batch,), 500)
                text = cond.embedding.expand(unet_batch, -1, -1)

                def bare_unet() -> None:
                    with torch.no_grad():
                        prior.unet(x_in, t_in, encoder_hidden_states=text)

                seconds, unet_seconds = interleaved_medians(
                    [lambda: paas_gradient(prior, y, 1.0, cond, n_noise=k, generator=generator), bare_unet],
                    args.repeats,
                )
                results["runs"].append(  # type: ignore[union-attr]
                    {
                        "guidance_scale": scale,
                        "noises": k,
                        "unet_batch": unet_batch,
                        "paas_seconds": round(seconds, 5),
                        "bare_unet_seconds": round(unet_seconds, 5),
                        "overhead_fraction": round(seconds / unet_seconds - 1, 3),
                        "load_seconds": round(load_seconds, 3),
                        "first_condition_seconds": round(condition_seconds, 4),
                    }
                )
        results["cached_condition_seconds"] = round(
            median_seconds(lambda: prior.condition(View(label="front")), args.repeats), 7
        )
        results["to_rgb_seconds"] = round(median_seconds(lambda: prior.to_rgb(y), args.repeats), 5)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
