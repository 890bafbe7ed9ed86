"""Export a model directory and a VAE into a bundle: ONNX graphs + ``manifest.json`` (see ``graphs.py``).

    export_bundle("models/mmgen", "models/vae", "bundles/mmgen-fp32")

Steps: load the model (explicit-softmax attention, the pattern TensorRT fuses) and the diffusers VAE; trace each
graph with a dynamic batch (TorchScript exporter, opset 20); optionally convert to fp16 (LayerNorm, softmax and
the timestep sinusoids stay fp32; inputs and outputs stay fp32); store weights as external data above 1 GiB
(protobuf's limit is 2 GiB); hash every file into the manifest. The bundle directory is written atomically, so an
interrupted export never leaves a bundle that loads.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from diffusers import AutoencoderKL
from torch import nn
from tqdm.auto import tqdm

from mmgen_edge.runtime.backend import RUNTIME_GRAPHS
from mmgen_edge.runtime.fileio import OUTPUT_MARKER, atomic_directory, check_output_directory, sha256_file, weights_sha256
from mmgen_edge.runtime.manifest import (
    BATCH_DIM,
    DECODE_DIM,
    MAX_BATCH,
    MODULATION_DIM,
    AutoencoderPart,
    DimRange,
    GraphEntry,
    LatentInfo,
    Manifest,
    Precision,
    Provenance,
    TensorSpec,
    VaeInfo,
    file_entry,
    graph_metadata,
    write_manifest,
)
from mmgen_edge.runtime.sampler import SamplerConfig

from .autoencoders import Autoencoder, decoder_upsampling, encoder_downsampling, load_autoencoder, part_parameters
from .distill_vae import trained_parts
from .finite import check_finite
from .graphs import GRAPH_IO, CachedDenoiserStep, Conditioning, DenoiserStep, VaeDecoder, VaeEncoder
from .model import MMGen, count_parameters
from .model_dir import WEIGHTS_FILE, load_model, read_model_dir_config
from .student_gate import StudentOptions, gate_students

#: Opset 20: the tanh GELU is one ``Gelu`` node (nine elementwise nodes before; 7 % of the demo's CPU step). Every
#: TensorRT 10 parser reads it (10.0: opsets 9-20), as do ONNX Runtime >= 1.17 and OpenVINO.
DEFAULT_OPSET = 20
#: Every graph the exporter knows: the runtime's four and the self-contained ``denoiser`` (for other runtimes).
ALL_GRAPHS = tuple(GRAPH_IO)
#: What a bundle holds by default: the graphs the runtime loads (``runtime.backend.RUNTIME_GRAPHS``).
DEFAULT_GRAPHS = RUNTIME_GRAPHS
EXTERNAL_DATA_THRESHOLD = 1 << 30
#: Ops kept in fp32 by the fp16 conversion: normalisations and softmax (range), the timestep sinusoids (precision).
FP16_KEEP_FP32_OPS = ("LayerNormalization", "Softmax", "Sin", "Cos", "InstanceNormalization", "ReduceMean", "Pow", "Sqrt")
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
}


def example_inputs(model: MMGen, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs of every MMGen graph (the values do not matter, the shapes and dtypes do)."""
    cfg = model.config
    x = torch.randn(batch, cfg.in_channels, cfg.latent_size, cfg.latent_size)
    t = torch.rand(batch, cfg.num_modalities)
    y = torch.full((batch,), cfg.null_label, dtype=torch.long)
    task = torch.zeros(batch, dtype=torch.long)
    scale = torch.tensor([1.5])
    with torch.no_grad():
        blocks, heads = Conditioning(model)(torch.cat([t, t]), torch.cat([y, y]), torch.cat([task, task]))
    return {
        "denoiser": (x, t, t * 0.5, y, task, scale),
        "conditioning": (t, y, task),
        "denoiser_cached": (x, t, t * 0.5, blocks, heads, scale),
    }


def dynamic_axes_for(graph: str) -> dict[str, dict[int, str]]:
    """Dimension 0 of every input/output, named by the symbol of its batch (N, B or V)."""
    inputs, outputs = GRAPH_IO[graph]
    symbol = {"conditioning": MODULATION_DIM, "vae_decoder": DECODE_DIM}.get(graph, BATCH_DIM)
    axes = {name: {0: symbol} for name in (*inputs, *outputs) if name != "cfg_scale"}
    if graph == "denoiser_cached":
        axes["block_modulation"] = axes["final_modulation"] = {0: MODULATION_DIM}
    return axes


def trace_to_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], graph: str, path: Path, opset: int) -> None:
    """Trace ``module`` to ``path``; output shapes are recorded from the traced outputs (batch dimension symbolic)."""
    inputs, outputs = GRAPH_IO[graph]
    with torch.no_grad():
        results = module.eval()(*args)
    results = results if isinstance(results, tuple) else (results,)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # strided Slice left unfolded: harmless
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes_for(graph),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    axes = dynamic_axes_for(graph)
    traced = onnx.load(str(path), load_external_data=False)  # above 2 GB the weights stay in their external files
    for value, result in zip(traced.graph.output, results):
        dims = value.type.tensor_type.shape.dim
        for i, size in enumerate(result.shape):
            dims[i].Clear()
            if i in axes.get(value.name, {}):
                dims[i].dim_param = axes[value.name][i]
            else:
                dims[i].dim_value = int(size)
    onnx.save_model(traced, str(path))


#: The largest finite float16.
FP16_MAX = 65504.0


def check_fits_fp16(model: onnx.ModelProto) -> None:
    """Refuse float32 weights beyond float16's range (ONNX Runtime's converter clamps them to 65504 silently, so the
    graph would compute with other weights than the model's), naming the first few."""
    from onnx import numpy_helper

    over = []
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor)
        largest = float(np.abs(values).max()) if values.size else 0.0
        if largest > FP16_MAX:
            over.append(f"{tensor.name} (largest |value| {largest:.4g})")
    if over:
        raise ValueError(
            f"weights beyond float16's range ({FP16_MAX:g}): {', '.join(over[:5])}{', ...' if len(over) > 5 else ''}; "
            "export them as fp32 (--precision fp32)"
        )


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations; inputs/outputs and the ops in ``FP16_KEEP_FP32_OPS`` stay fp32 (Casts inserted).
    Weights beyond float16's range are refused (:func:`check_fits_fp16`), not clamped."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    check_fits_fp16(model)
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32_OPS)
    )
    wrapper = OnnxModel(converted)
    wrapper.topological_sort()  # the converter appends its input Casts after their consumers
    return wrapper.model


def finalize_onnx(traced: Path, path: Path, precision: Precision, metadata: Mapping[str, str] | None = None) -> str | None:
    """Load the traced graph, convert precision, add ``metadata`` (ONNX ``metadata_props``), and save it as ``path``
    (external data above the threshold).

    ``traced`` sits in a scratch folder of its own: above 2 GB the exporter writes one external file per tensor
    there. Returns the external data file's name, or None when the weights are inside the .onnx file.
    """
    model = onnx.load(str(traced))
    if precision == Precision.FP16:
        model = convert_to_fp16(model)
    if metadata:
        onnx.helper.set_model_props(model, dict(metadata))
    size = sum(init.ByteSize() for init in model.graph.initializer)
    external = f"{path.name}.data" if size > EXTERNAL_DATA_THRESHOLD else None
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external)
        onnx.checker.check_model(str(path))  # path form: checks models above 2 GB with external data
    else:
        onnx.save_model(model, str(path))
        onnx.checker.check_model(model)
    return external


def tensor_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    model = onnx.load(str(path), load_external_data=False)

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        t = value.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim)
        return TensorSpec(name=value.name, dtype=ONNX_DTYPES[t.elem_type], shape=dims)

    return tuple(spec(v) for v in model.graph.input), tuple(spec(v) for v in model.graph.output)


def export_graph(
    module: nn.Module, args: tuple[torch.Tensor, ...], name: str, bundle: Path, precision: Precision, opset: int,
    metadata: Mapping[str, str] | None = None,
) -> GraphEntry:
    """Trace ``module`` as graph ``name`` into ``bundle/NAME.onnx`` (precision converted, ``metadata`` added: see
    ``runtime.manifest.graph_metadata``) and describe it."""
    scratch = bundle / ".trace" / name
    scratch.mkdir(parents=True)
    trace_to_onnx(module, args, name, scratch / f"{name}.onnx", opset)
    path = bundle / f"{name}.onnx"
    external = finalize_onnx(scratch / f"{name}.onnx", path, precision, metadata)
    shutil.rmtree(bundle / ".trace")
    inputs, outputs = tensor_specs(path)
    return GraphEntry(file=path.name, external_data=external, inputs=inputs, outputs=outputs, precision=precision)


def autoencoder_part(directory: Path, vae: Autoencoder, half: str) -> AutoencoderPart:
    """What the manifest records of the diffusers directory a VAE graph (``half``: encoder / decoder) came from."""
    return AutoencoderPart(
        family=type(vae).__name__, source=directory.name, parameters=part_parameters(vae, half),
        weights_sha256=weights_sha256(directory), upsampling=decoder_upsampling(vae) if half == "decoder" else None,
    )  # fmt: skip


def load_student(directory: Path, half: str, teacher: AutoencoderKL, downsample: int) -> Autoencoder:
    """An ``--encoder`` / ``--decoder`` directory, checked against the teacher VAE and the model's latent grid."""
    student = load_autoencoder(directory, label=f"{half} {directory}")  # NaN/Inf refused there, naming the tensor
    parts = trained_parts(directory)
    if parts is not None and half not in parts:
        raise ValueError(f"{directory} is a distill-vae student whose {half} was not trained (trained: "
                         f"{', '.join(parts)}); distil it with {'--encoder' if half == 'encoder' else 'a decoder'}")  # fmt: skip
    if int(student.config.latent_channels) != int(teacher.config.latent_channels):
        raise ValueError(f"{half} {directory} has {student.config.latent_channels} latent channels, the VAE "
                         f"{teacher.config.latent_channels}")  # fmt: skip
    if half == "encoder" and encoder_downsampling(student) != downsample:
        raise ValueError(f"encoder {directory} downsamples {encoder_downsampling(student)}x; the model's latents are "
                         f"1/{downsample} of the image")  # fmt: skip
    up = decoder_upsampling(student)
    if half == "decoder" and (up > downsample or downsample % up):
        raise ValueError(f"decoder {directory} upsamples {up}x; the model's latents need {downsample}x (or a "
                         "divisor of it, resized in the graph)")  # fmt: skip
    return student


def vae_kind(vae_dir: Path, vae: AutoencoderKL) -> str:
    sd = tuple(vae.config.block_out_channels) == (128, 256, 512, 512) and abs(vae.config.scaling_factor - 0.18215) < 1e-6
    return "sd-vae-ft-mse" if sd else vae_dir.name


def export_bundle(
    model_dir: str | os.PathLike[str],
    vae_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    precision: Precision | str = Precision.FP32,
    max_batch: int = 8,
    sampler: SamplerConfig | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    progress: bool = False,
    graphs: Sequence[str] = DEFAULT_GRAPHS,
    students: StudentOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Export the graphs (default: the runtime's four) and write the bundle atomically; returns its manifest.

    ``students`` swaps in distilled VAE halves (``StudentOptions.decoder`` / ``encoder``: diffusers
    ``AutoencoderTiny`` or ``AutoencoderKL`` directories, e.g. from ``mmgen-edge distill-vae`` or the public TAESD)
    for the ``vae_decoder`` / ``vae_encoder`` graphs. The bundle is then gated against the same bundle with
    ``vae_dir``'s own halves (:func:`~.student_gate.gate_students`): unless forced, a bundle that fails is not
    written (:class:`~mmgen_edge.calibration.vae_gate.StudentGateError`); the report goes into ``manifest.vae.gate``.

    Weights holding NaN or Inf (model or VAE) are refused with the tensor's name before anything is traced.
    The runtime (and ``mmgen-edge triton-repo``) needs conditioning, denoiser_cached, vae_encoder and vae_decoder;
    the self-contained ``denoiser`` (one whole sampler step in one graph) is never loaded by them and is exported
    only on request (``graphs=ALL_GRAPHS``, ``mmgen-edge export --with-denoiser``) for runtimes of your own. A
    subset is useful for quick checks of huge models.
    """
    precision = Precision(precision)
    if precision == Precision.INT8:
        raise ValueError("precision int8 comes from calibration (mmgen-edge calibrate), not from export")
    if not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be in 1..{MAX_BATCH}, got {max_batch}")
    model_dir, vae_dir = Path(model_dir), Path(vae_dir)
    students = students or StudentOptions()
    from mmgen_edge.calibration.sources import data_path

    students_and_data = (students.encoder, students.decoder, data_path(students.gate_data))
    inputs_used = (model_dir, vae_dir, *(Path(d) for d in students_and_data if d is not None))
    check_output_directory(out, overwrite, protect=inputs_used)  # before any loading (again when writing)
    meta = read_model_dir_config(model_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir} is not a diffusers AutoencoderKL directory: config.json is missing")
    model = load_model(model_dir, dtype=torch.float32)
    check_finite(model.state_dict(), f"model directory {model_dir} ({WEIGHTS_FILE})")
    model.set_fused_attention(False)
    vae = load_autoencoder(vae_dir, expect="AutoencoderKL")  # NaN/Inf refused there, naming the tensor
    cfg = model.config
    if vae.config.latent_channels != cfg.latent_channels:
        raise ValueError(f"VAE has {vae.config.latent_channels} latent channels, the model expects {cfg.latent_channels}")
    halves: dict[str, tuple[Path, Autoencoder]] = {"encoder": (vae_dir, vae), "decoder": (vae_dir, vae)}
    for half, directory in (("encoder", students.encoder), ("decoder", students.decoder)):
        if directory is not None:
            if f"vae_{half}" not in graphs:
                raise ValueError(f"a student {half} was given but the vae_{half} graph is not exported")
            halves[half] = (Path(directory), load_student(Path(directory), half, vae, cfg.vae_downsample))
    if students.gate_data is not None and (students.encoder is not None or students.decoder is not None):
        from mmgen_edge.calibration.sources import iter_calibration_images

        next(iter_calibration_images(students.gate_data, 1), None)  # a missing / empty / unreadable source fails now

    examples = example_inputs(model)
    image = torch.rand(2, 3, cfg.resolution, cfg.resolution) * 2 - 1
    latent = torch.randn(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    jobs: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
        "denoiser": lambda: (DenoiserStep(model), examples["denoiser"]),
        "conditioning": lambda: (Conditioning(model), examples["conditioning"]),
        "denoiser_cached": lambda: (CachedDenoiserStep(model), examples["denoiser_cached"]),
        "vae_encoder": lambda: (VaeEncoder(halves["encoder"][1]), (image,)),
        "vae_decoder": lambda: (VaeDecoder(halves["decoder"][1], cfg.resolution), (latent,)),
    }
    unknown = sorted(set(graphs) - set(jobs))
    if unknown or not graphs:
        raise ValueError(f"unknown graphs {unknown or list(graphs)}; choose from {list(jobs)}")
    entries: dict[str, GraphEntry] = {}
    with atomic_directory(out, overwrite=overwrite, protect=inputs_used) as tmp:
        for name in tqdm(graphs, desc="export graphs", unit="graph", disable=not progress):
            module, args = jobs[name]()
            entries[name] = export_graph(module, args, name, tmp, precision, opset, graph_metadata(cfg, name))
        files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != OUTPUT_MARKER)
        decode_max = cfg.num_modalities * max_batch  # one image per modality per sample
        manifest = Manifest(
            model=cfg,
            latent=LatentInfo(
                channels_per_modality=cfg.latent_channels,
                height=cfg.latent_size,
                width=cfg.latent_size,
                scaling_factor=float(vae.config.scaling_factor),
                downsample=cfg.vae_downsample,
            ),
            vae=VaeInfo(
                kind=vae_kind(vae_dir, vae),
                scaling_factor=float(vae.config.scaling_factor),
                parameters=count_parameters(vae),
                weights_sha256=weights_sha256(vae_dir),
                encoder=autoencoder_part(*halves["encoder"], "encoder") if "vae_encoder" in graphs else None,
                decoder=autoencoder_part(*halves["decoder"], "decoder") if "vae_decoder" in graphs else None,
            ),
            sampler=sampler or SamplerConfig(),
            precision=precision,
            dims={
                BATCH_DIM: DimRange(min=1, opt=1, max=max_batch),
                MODULATION_DIM: DimRange(min=1, opt=1, max=2 * max_batch),
                DECODE_DIM: DimRange(min=1, opt=min(3, decode_max), max=decode_max),
            },
            opset=opset,
            graphs=entries,
            files=tuple(file_entry(tmp, f) for f in files),
            provenance=Provenance(
                source_checkpoint_sha256=meta.provenance.source_sha256,
                source_release=meta.provenance.release,
                model_weights_sha256=sha256_file(model_dir / WEIGHTS_FILE),
            ),
        )
        write_manifest(tmp, manifest)
        if manifest.vae.students:
            teacher_graphs = {"vae_encoder": (VaeEncoder(vae), (image,)),
                              "vae_decoder": (VaeDecoder(vae, cfg.resolution), (latent,))}  # fmt: skip
            manifest = gate_students(
                tmp, manifest, {name: teacher_graphs[name] for name in manifest.vae.students},
                {half: autoencoder_part(vae_dir, vae, half) for half in ("encoder", "decoder")}, students,
                lambda module, args, name, bundle: export_graph(module, args, name, bundle, precision, opset),
                progress=progress, log=log,
            )  # fmt: skip
            write_manifest(tmp, manifest)
    return manifest
