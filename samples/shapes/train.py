"""Train the shapes demo model: a small VAE, then a small MMGen with the release's recipe, on CPU.

    python -m mmgen_edge.samples.shapes.train --work out/shapes-train [--minutes 45] [--export samples/shapes/weights]

Stages, each cached in ``--work`` so an interrupted run resumes where it stopped:
1. ``dataset.npz``: render scenes (seeds 0..N-1) and encode the four modalities as the release does;
2. ``vae/``: train the demo VAE (``vae.py``) on random 64 px crops of all four modalities (it is convolutional);
3. ``latents.npz``: encode every scene once (scaled latent means), (N, 16, 16, 16);
4. ``checkpoint.pt``: train MMGen. The checkpoint is a release-layout file (model / ema / opt / args / steps), so
   the trained model is imported with the same ``mmgen-edge convert`` path as the official checkpoints.

Recipe (the release's): linear interpolant, v-prediction, per-modality timesteps; half of each batch is joint
generation (one shared t, task 0), half has one modality held clean at t_b with its task index; class dropout 0.1;
the loss covers the noisy slots. Our one change, for a CPU budget: the held modality is rgb with probability 0.5
(perception is the demo's main job) and each other modality with probability 1/6. The phases' settings are in
``recipes.py``.
"""

from __future__ import annotations

import argparse
import argparse as _argparse
import contextlib
import functools
import hashlib
import multiprocessing
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from mmgen_edge.export.checkpoint import convert_checkpoint
from mmgen_edge.export.model import MMGen
from mmgen_edge.runtime.sampler import RELEASE_CONDITION_T

from .encoding import modality_stack
from .recipes import RECIPES, TINY_RECIPE, RecipeConfig
from .scenes import render_scene
from .vae import encode, images_to_tensor, new_demo_vae


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


#: Image pixels per latent pixel along each axis (the demo VAE's downsampling; the model config's ``vae_downsample``).
LATENT_DOWNSAMPLE = 8


def object_coverage(instances: np.ndarray, block: int = LATENT_DOWNSAMPLE) -> np.ndarray:
    """(H, W) instance ids -> (H / block, W / block) float32: the share of each block's pixels on an object (id > 0)."""
    h, w = instances.shape
    if h % block or w % block:
        raise ValueError(f"instances {instances.shape} do not tile into {block} x {block} blocks")
    return (instances > 0).reshape(h // block, block, w // block, block).mean(axis=(1, 3), dtype=np.float32)


def _render_example(
    seed: int, size: int, palette: tuple[tuple[int, int, int], ...] | None
) -> tuple[np.ndarray, int, np.ndarray]:
    scene = render_scene(seed, size)
    stack = modality_stack(scene, np.random.default_rng(seed), palette)
    return stack, scene.category, object_coverage(scene.instances)


def _palette_array(palette: tuple[tuple[int, int, int], ...] | None) -> np.ndarray:
    """The palette as stored in dataset.npz: (K, 3) int64, (0, 3) for random colours."""
    return np.asarray(palette if palette is not None else np.zeros((0, 3)), dtype=np.int64).reshape(-1, 3)


def build_dataset(work: Path, recipe: RecipeConfig, workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 4, H, W, 3) uint8 modality images, (N,) labels and (N, h, w) object coverage per latent pixel, cached in
    dataset.npz (a cache from before the coverage was stored, or painted with other mask colours, is rendered
    again; a cache from before the palette was stored has random mask colours)."""
    path = work / "dataset.npz"
    palette = _palette_array(recipe.mask_palette)
    if path.exists():
        data = np.load(path)
        cached_palette = data["mask_palette"] if "mask_palette" in data.files else _palette_array(None)
        if "objects" in data.files and len(data["labels"]) == recipe.num_scenes and np.array_equal(cached_palette, palette):
            return data["images"], data["labels"], data["objects"]
    size, n = recipe.resolution, recipe.num_scenes
    images = np.empty((n, 4, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    objects = np.empty((n, size // LATENT_DOWNSAMPLE, size // LATENT_DOWNSAMPLE), np.float32)
    seeds = [recipe.seed + i for i in range(n)]
    render = functools.partial(_render_example, size=size, palette=recipe.mask_palette)
    with contextlib.ExitStack() as stack:
        mapper = map
        if workers > 1:  # same seeds, same images: only the wall time changes
            mapper = functools.partial(stack.enter_context(multiprocessing.get_context("fork").Pool(workers)).imap, chunksize=64)
        for i, example in enumerate(tqdm(mapper(render, seeds), total=n, desc="render scenes", unit="scene")):
            images[i], labels[i], objects[i] = example
    tmp = work / "dataset.tmp.npz"
    np.savez(tmp, images=images, labels=labels, objects=objects, mask_palette=palette)
    os.replace(tmp, path)
    return images, labels, objects


def _vae_phase(
    vae: AutoencoderKL, flat: np.ndarray, steps: int, batch: int, crop: int, lr: float, recipe: RecipeConfig,
    rng: np.random.Generator, desc: str,
) -> None:
    """Train on random ``crop`` px crops (crop = full size: whole images); the lr decays over the last 30 %."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    size = flat.shape[1]
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps - step) / (0.3 * steps))
        idx = rng.integers(0, len(flat), batch)
        y0, x0 = rng.integers(0, size - crop + 1, 2)
        x = images_to_tensor(np.ascontiguousarray(flat[idx, y0 : y0 + crop, x0 : x0 + crop]))  # (B, 3, c, c)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + 0.5 * ((recon - x) ** 2).mean() + recipe.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")


def train_vae(work: Path, images: np.ndarray, recipe: RecipeConfig) -> AutoencoderKL:
    """Phase 1 on 64 px crops (fast), phase 2 on whole images; each phase cached (vae_crops/, vae/)."""
    out, crops = work / "vae", work / "vae_crops"
    if (out / "config.json").exists():
        return AutoencoderKL.from_pretrained(out, low_cpu_mem_usage=False).eval()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    flat = images.reshape(-1, *images.shape[2:])  # every modality image: (N*4, H, W, 3)
    if (crops / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(crops, low_cpu_mem_usage=False)
    else:
        vae = new_demo_vae()
        _vae_phase(vae.train(), flat, recipe.vae_steps, recipe.vae_batch, recipe.vae_crop, recipe.vae_lr, recipe, rng, "train VAE (crops)")
        vae.save_pretrained(crops)
    _vae_phase(vae.train(), flat, recipe.vae_full_steps, recipe.vae_full_batch, recipe.resolution, recipe.vae_full_lr,
               recipe, rng, "train VAE (whole images)")  # fmt: skip
    vae.eval()
    with torch.no_grad():  # SD-style scaling factor: unit variance latents
        sample = flat[rng.choice(len(flat), min(512, len(flat)), replace=False)]
        vae.register_to_config(scaling_factor=1.0)
        vae.register_to_config(scaling_factor=float(1.0 / encode(vae, sample).std()))
    vae.save_pretrained(out)
    return vae


def modality_digests(images: np.ndarray) -> np.ndarray:
    """(M,) sha256 hex digests of each modality's images ((N, M, H, W, 3) uint8), hashed in chunks of scenes."""
    digests = [hashlib.sha256() for _ in range(images.shape[1])]
    for i in range(0, len(images), 1024):
        chunk = images[i : i + 1024]
        for k, digest in enumerate(digests):
            digest.update(np.ascontiguousarray(chunk[:, k]).data)
    return np.array([d.hexdigest() for d in digests])


def encode_dataset(work: Path, vae: AutoencoderKL, images: np.ndarray) -> torch.Tensor:
    """(N, 4 * C, h, w) scaled latent means of every scene's modalities, cached in latents.npz with each modality's
    image digest: a modality whose images changed (e.g. masks painted again) is encoded again, the others are kept.
    A cache without digests (older runs) is kept only when its length matches."""
    path = work / "latents.npz"
    n, m = images.shape[:2]
    digests = modality_digests(images)
    latents: np.ndarray | None = None
    stale = list(range(m))
    if path.exists():
        cached = np.load(path)
        if len(cached["latents"]) == n:
            latents = cached["latents"]
            old = cached["digests"] if "digests" in cached.files else digests  # older caches: trusted by length
            stale = [k for k in range(m) if old[k] != digests[k]]
    if latents is not None and not stale:
        return torch.from_numpy(latents)
    for k in stale:
        flat = images[:, k]  # (N, H, W, 3)
        chunks = [encode(vae, flat[i : i + 256]) for i in tqdm(range(0, n, 256), desc=f"encode latents ({k})", unit="chunk")]
        slot = torch.cat(chunks).numpy()  # (N, C, h, w)
        if latents is None:
            latents = np.empty((n, m * slot.shape[1], *slot.shape[2:]), np.float32)
        c = slot.shape[1]
        latents[:, k * c : (k + 1) * c] = slot
    tmp = work / "latents.tmp.npz"
    np.savez(tmp, latents=latents, digests=digests)
    os.replace(tmp, path)
    return torch.from_numpy(latents)


def training_batch(
    latents: torch.Tensor, labels: torch.Tensor, recipe: RecipeConfig, g: torch.Generator, null_label: int,
    objects: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """x_t, t (N, 4), y, task, target v and the loss weight for one batch of the release recipe.

    The weight is (N, 16, 1, 1), 0 on the held slot and 1 elsewhere; with ``objects`` ((num_scenes, h, w) coverage)
    and ``recipe.object_loss_weight`` it is (N, 16, h, w): each latent pixel times ``1 + w * coverage``.
    """
    b, m = recipe.batch, 4
    idx = torch.randint(0, len(latents), (b,), generator=g)
    device = latents.device
    x0, y = latents[idx.to(device)], labels[idx].clone()
    y[torch.rand(b, generator=g) < recipe.class_dropout] = null_label
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = torch.rand(b, 1, generator=g).expand(b, m).clone()  # one shared t per sample
    task = torch.zeros(b, dtype=torch.long)
    conditioned = torch.arange(b) >= round(b * (1 - recipe.condition_fraction))  # the tail: one modality held clean
    probs = torch.tensor([recipe.rgb_condition_prob] + [(1 - recipe.rgb_condition_prob) / (m - 1)] * (m - 1))
    k = torch.multinomial(probs, b, replacement=True, generator=g)
    rows = torch.nonzero(conditioned).squeeze(1)
    t[rows, k[rows]] = RELEASE_CONDITION_T
    task[rows] = k[rows] + 1
    t, y, task = t.to(device), y.to(device), task.to(device)
    tt = t.repeat_interleave(x0.shape[1] // m, dim=1)[:, :, None, None]  # (B, 16, 1, 1)
    x_t = (1 - tt) * x0 + tt * noise
    weight = (tt != RELEASE_CONDITION_T).float()  # no loss on the held slot
    if objects is not None and recipe.object_loss_weight:
        weight = weight * (1.0 + recipe.object_loss_weight * objects[idx.to(objects.device)][:, None])  # (B, 16, h, w)
    return x_t, t, y, task, noise - x0, weight


def deepened_blocks(old_depth: int, new_depth: int) -> list[int | None]:
    """Where each block of a model deepened from ``old_depth`` to ``new_depth`` comes from.

    Returns ``new_depth`` entries: the old block index, or None for a new block. The new blocks are spread evenly,
    each after an equal run of old ones (6 -> 9: old, old, new, old, old, new, old, old, new), so every stage of the
    network gains depth.
    """
    if not 1 <= old_depth <= new_depth:
        raise ValueError(f"can only deepen a model: {old_depth} -> {new_depth} blocks")
    added = new_depth - old_depth
    after = [math.ceil((i + 1) * old_depth / added) for i in range(added)]  # old blocks before each new block
    sources: list[int | None] = []
    for old in range(old_depth):
        sources.append(old)
        sources.extend([None] * after.count(old + 1))
    return sources


def deepened_state_dict(start: MMGen, depth: int) -> dict[str, torch.Tensor]:
    """``start``'s weights for the same architecture with ``depth`` blocks, computing exactly the same function.

    The new blocks are adaLN-Zero blocks as DiT initialises them: their modulation is all zeros, so their gates are
    0 and each is the identity until training moves it; their attention and MLP get DiT's initialisation.
    """
    grown = MMGen(start.config.model_copy(update={"depth": depth}))  # DiT init: new blocks are identities
    state = grown.state_dict()
    old = start.state_dict()
    for key, value in old.items():
        if not key.startswith("blocks."):
            state[key] = value.clone()
    for position, source in enumerate(deepened_blocks(start.config.depth, depth)):
        if source is not None:
            prefix = f"blocks.{source}."
            for key, value in old.items():
                if key.startswith(prefix):
                    state[f"blocks.{position}." + key[len(prefix):]] = value.clone()
    return state


def train_mmgen(
    work: Path, latents: torch.Tensor, labels: np.ndarray, recipe: RecipeConfig, minutes: float | None,
    init: Path | None = None, device: str = "cpu", objects: np.ndarray | None = None,
) -> Path:
    """Train (or resume) ``work/checkpoint.pt``; a new run starts from the model directory ``init`` when given.

    ``device`` only changes where the arithmetic runs: the random draws come from the same CPU generator, and the
    checkpoint is device-independent, so a run may resume on another device.
    """
    from mmgen_edge.export.checkpoint import architecture_from_args
    from mmgen_edge.export.model_dir import load_model

    path = work / "checkpoint.pt"
    args = recipe.args()
    config = architecture_from_args(args, None)
    model = MMGen(config).to(device)
    ema = MMGen(config).to(device).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    latents = latents.to(device)
    g = torch.Generator().manual_seed(recipe.seed if recipe.draw_seed is None else recipe.draw_seed)
    step = 0
    if path.exists():
        with torch.serialization.safe_globals([_argparse.Namespace]):
            state = torch.load(path, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"].cpu())
        step = int(state["steps"])
    else:
        if init is not None:
            start = load_model(init, dtype=torch.float32)
            same = start.config.model_copy(update={"mask_palette": config.mask_palette, "depth": config.depth})
            if same != config or start.config.depth > config.depth:  # same architecture, or a shallower one
                raise ValueError(f"--init {init}: its architecture {start.config} is not the recipe's {config}")
            model.load_state_dict({k: v.to(device) for k, v in deepened_state_dict(start, config.depth).items()})
        ema.load_state_dict(model.state_dict())
    y_all = torch.from_numpy(labels)
    coverage = None if objects is None else torch.from_numpy(objects).to(device)
    deadline = time.monotonic() + 60 * minutes if minutes else math.inf
    bar = tqdm(total=recipe.steps, initial=step, desc="train MMGen", unit="step")
    started = time.monotonic()

    def save() -> None:
        _atomic_save(
            {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
             "args": _argparse.Namespace(**args), "steps": step, "rng": g.get_state()},
            path,
        )  # fmt: skip

    while step < recipe.steps and time.monotonic() < deadline:
        for group in opt.param_groups:
            group["lr"] = recipe.learning_rate(step)
        x_t, t, y, task, target, weight = training_batch(latents, y_all, recipe, g, config.null_label, coverage)
        v = model(x_t, t, y, task)
        weight = weight.expand_as(v)  # the weighted mean over every noisy latent value
        loss = (((v - target) ** 2) * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % recipe.checkpoint_every == 0:
            save()
            log_progress(work, step, loss.item(), time.monotonic() - started)
    save()
    bar.close()
    return path


def log_progress(work: Path, step: int, loss: float, seconds: float) -> None:
    """Append one line to ``work/progress.jsonl``: the learning curve of every (resumed) run."""
    import json

    with open(work / "progress.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "loss": round(loss, 5), "run_seconds": round(seconds, 1)}) + "\n")


def _same_autoencoder(a: Path, b: Path) -> bool:
    """Whether two diffusers directories hold the same weights and the same settings (``_``-keys aside)."""
    import json

    from mmgen_edge.runtime.fileio import weights_sha256

    def settings(d: Path) -> dict:
        return {k: v for k, v in json.loads((d / "config.json").read_text()).items() if not k.startswith("_")}

    try:
        return settings(a) == settings(b) and weights_sha256(a) == weights_sha256(b)
    except (OSError, ValueError):
        return False


def export_weights(work: Path, out: Path, vae: AutoencoderKL) -> None:
    """Write the shipped files: ``out/mmgen`` (model directory, fp16) and ``out/vae`` (diffusers, fp32).

    Each is written atomically and replaces only what mmgen-edge wrote (``convert``'s and ``atomic_directory``'s
    rule: a folder of other files, e.g. a downloaded VAE, is refused, never deleted); an ``out/vae`` that already
    holds this VAE is kept as it is (phase 2 and 3 train with the shipped VAE).
    """
    import shutil
    import tempfile

    from mmgen_edge.runtime.fileio import atomic_directory

    convert_checkpoint(work / "checkpoint.pt", out / "mmgen", dtype="fp16", sha256="auto", overwrite=True)
    target = out / "vae"
    with tempfile.TemporaryDirectory(prefix=".vae-staged-", dir=out) as staged:
        vae.save_pretrained(staged)
        if target.is_dir() and not target.is_symlink() and _same_autoencoder(target, Path(staged)):
            return
        with atomic_directory(target, overwrite=True) as tmp:
            for item in Path(staged).iterdir():
                shutil.move(str(item), tmp / item.name)


def run(
    work: Path, recipe: RecipeConfig, minutes: float | None = None, export: Path | None = None,
    init: Path | None = None, vae_dir: Path | None = None, threads: int | None = None, device: str = "cpu",
    workers: int = 1,
) -> Path:
    """Every stage, each cached in ``work``; ``vae_dir`` uses a trained VAE instead of training one."""
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    work.mkdir(parents=True, exist_ok=True)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # set here, for this run only (never at import)
        torch.backends.cudnn.allow_tf32 = True
    images, labels, objects = build_dataset(work, recipe, workers)
    if vae_dir is not None and not (work / "vae" / "config.json").exists():
        import shutil

        shutil.copytree(vae_dir, work / "vae")
    vae = train_vae(work, images, recipe)
    latents = encode_dataset(work, vae.to(device), images)
    checkpoint = train_mmgen(work, latents, labels, recipe, minutes, init, device, objects)
    vae = vae.cpu()
    if export is not None:
        export_weights(work, export, vae)
    return checkpoint


def _device(text: str) -> str:
    """An argparse ``type=`` for ``--device``: cpu, cuda or cuda:N."""
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")


def main() -> None:
    from mmgen_edge.cli import bounded_int, positive_float, positive_int, thread_count

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("out/shapes-train"), help="cache / resume directory")
    parser.add_argument("--minutes", type=positive_float, help="stop MMGen training after this many minutes (resumable)")
    parser.add_argument("--steps", type=positive_int, help="MMGen steps (default: the recipe's)")
    parser.add_argument("--export", type=Path, help="write the shipped weights here (e.g. samples/shapes/weights)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run of every stage")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --work (an error if it has no checkpoint.pt; without --resume an "
                             "existing checkpoint is continued too)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="base",
                        help="base: phase 1 from scratch; finetune / long: phase 2, objects: phase 3, "
                             "objects-continue: phase 4, palette / palette-vae: phase 5 / 5b (use with --init and --vae)")
    parser.add_argument("--init", type=Path, help="start a new MMGen run from this model directory's weights")
    parser.add_argument("--vae", type=Path, help="use this trained VAE directory instead of training one")
    parser.add_argument("--threads", type=thread_count, help="torch CPU threads (default: every core)")
    parser.add_argument("--device", type=_device, default="cpu",
                        help="cpu, cuda or cuda:N (same draws, same recipe; resumable across devices)")
    parser.add_argument("--workers", type=bounded_int(1, 256), default=1, help="processes rendering the scenes (same images)")
    args = parser.parse_args()
    if args.resume and not (args.work / "checkpoint.pt").is_file():
        parser.error(f"--resume: {args.work / 'checkpoint.pt'} does not exist (nothing to resume; drop --resume to start)")
    recipe = TINY_RECIPE if args.tiny else RECIPES[args.recipe]
    if args.steps is not None:
        recipe = replace(recipe, steps=args.steps)
    print(run(args.work, recipe, args.minutes, args.export, args.init, args.vae, args.threads, args.device, args.workers))


if __name__ == "__main__":
    main()
