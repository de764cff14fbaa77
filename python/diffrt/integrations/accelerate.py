"""One call to run an existing diffusers pipeline on diffrt: ``accelerate(pipe)``; ``undo(pipe)`` restores it.

``accelerate(pipe, dtype=None, compile=False, backend=None)`` changes the pipeline in place and returns
the same object, still called the diffusers way (``pipe(prompt, ...)``):

* attention: every ``Attention`` of the UNet and the VAE running one of diffusers' standard processors
  (``AttnProcessor2_0``, ``AttnProcessor``, ``AttnAddedKVProcessor2_0``, ``AttnAddedKVProcessor``) gets
  :class:`~diffrt.integrations.diffusers.DiffrtAttnProcessor` (diffrt's fused kernel, same results to
  float32 rounding). Others (LoRA / IP-Adapter / fused-projection / custom processors, joint attention)
  keep theirs; ``pipe._diffrt_report`` says which and why.
* schedulers: every scheduler component whose class is a key of :data:`FUSED_SCHEDULERS` (by class name,
  diffusers' own classes only) is replaced by ``diffrt_class.from_config(scheduler.config)``.
* modules: every submodule of the UNet and VAE whose exact type is a key of :data:`MODULE_SWAPS` is
  replaced by what the table's factory builds from it: GroupNorm, LayerNorm and diffusers' GEGLU run on
  diffrt's fused kernels, diffusers' ResnetBlock2D runs each norm → SiLU as one fused GroupNorm+SiLU, and
  the UNet's time_proj + time_embedding (sinusoid → Linear → SiLU → Linear) run as one fused timestep_mlp call
  (:mod:`diffrt.integrations.diffusers_norms`; not with backend "openvino").
* dtype: every ``nn.Module`` component's floating-point weights are cast once to ``dtype``; bfloat16 for a
  pipeline on a CPU without fast bfloat16 arithmetic (:func:`diffrt.precision.cpu_bf16_support`) is float32
  instead, with a :class:`~diffrt.precision.Bfloat16ComputeWarning` and ``report.dtype_note`` saying why.
* backend, for the UNet body: "torch" (eager, the default), "compile" (``torch.compile(dynamic=False)``
  of the UNet's forward; the first call of each input shape compiles, which takes minutes for a full-size
  UNet; inside the compiled graph each diffrt op is one ``torch.ops.diffrt`` node running its kernel) or
  "openvino" (the UNet converted once per input signature with ``openvino.convert_model`` and run by
  OpenVINO's CPU plugin in float32, with the UNet's own attention processors; the weights are hashed at the
  first call and converted models are cached on disk, see :func:`openvino_cache_dir`; OpenVINO runs on
  ``torch.get_num_threads()`` threads, as diffrt's kernels do — after changing the
  weights, undo and accelerate again). ``compile=True`` is ``backend="compile"``.

The pipeline's config names the fused scheduler class while accelerated: ``undo`` before ``save_pretrained``.

Calling ``accelerate`` on an already accelerated pipeline is an error: ``undo(pipe)`` first. ``undo`` puts
back the very objects that were there (processors, schedulers, submodules, forward, weight tensors), so
the pipeline's outputs are bitwise those from before. With ``dtype=``, the original weights are kept
(referenced, not copied) until ``undo``, which is what makes it exact.

:func:`accelerate_denoiser` offers the "compile" and "openvino" backends for diffrt's own denoisers (a
diffrt UNet, a :class:`DiffusersUNetDenoiser`, ...), returning a denoiser diffrt's pipelines accept.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..denoiser import check_denoiser
from ..precision import compute_dtype, cpu_bf16_support

__all__ = ["ATTENTION_PROCESSOR", "AccelerationReport", "AcceleratedDenoiser", "BACKENDS", "DTYPES", "FUSED_SCHEDULERS",
           "MODULE_SWAPS", "OPENVINO_CACHE_ENV", "OPENVINO_CPU_CONFIG", "accelerate", "accelerate_denoiser",
           "openvino_cache_dir", "undo"]

BACKENDS = ("torch", "compile", "openvino")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# {diffusers scheduler class name: diffrt class, or "module:Class" imported when first needed}. The diffrt
# class is built with ``from_config(scheduler.config)`` and must be a drop-in for the diffusers class
# (same set_timesteps / step signatures). Add a fused scheduler with one line.
FUSED_SCHEDULERS: Dict[str, Union[type, str]] = {
    "DDIMScheduler": "diffrt.integrations.schedulers:DDIMScheduler",
    "DPMSolverMultistepScheduler": "diffrt.integrations.schedulers:DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler": "diffrt.integrations.schedulers:EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler": "diffrt.integrations.schedulers:EulerAncestralDiscreteScheduler",
    "DDIMInverseScheduler": "diffrt.integrations.diffusers_ddim:FusedDDIMInverseScheduler",
}

# {exact module type, or its "module.QualName": factory(module) -> replacement module, or None to leave that
# instance; the factory may be given as "module:attr.path", imported when first needed}. Applied to every
# submodule of the UNet and the VAE; e.g. ``MODULE_SWAPS[torch.nn.GroupNorm] = DiffrtGroupNorm.from_module`` or
# ``MODULE_SWAPS["diffusers.models.activations.GEGLU"] = "diffrt.ops.norm:DiffrtGEGLU.from_module"``.
MODULE_SWAPS: Dict[Union[type, str], Union[Callable[[torch.nn.Module], Optional[torch.nn.Module]], str]] = {
    torch.nn.GroupNorm: "diffrt.integrations.diffusers_norms:DiffrtGroupNorm.from_module",
    torch.nn.LayerNorm: "diffrt.integrations.diffusers_norms:DiffrtLayerNorm.from_module",
    "diffusers.models.activations.GEGLU": "diffrt.integrations.diffusers_norms:diffrt_geglu",
    "diffusers.models.resnet.ResnetBlock2D": "diffrt.integrations.diffusers_norms:diffrt_resnet_block",
    "diffusers.models.embeddings.Timesteps": "diffrt.integrations.diffusers_norms:diffrt_timesteps",
}

# The processor installed on supported attention modules (by path: integrations.diffusers re-exports this module).
ATTENTION_PROCESSOR: Union[type, str] = "diffrt.integrations.diffusers:DiffrtAttnProcessor"
# diffusers' processors that DiffrtAttnProcessor reproduces step for step.
_REPLACEABLE_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor", "AttnAddedKVProcessor2_0", "AttnAddedKVProcessor")
_DIFFUSERS_PROCESSOR_MODULE = "diffusers.models.attention_processor"
# The models whose attention, submodules and weights accelerate() touches, by pipeline attribute.
_MODELS = ("unet", "vae")
_STATE = "_diffrt_acceleration"
_REPORT = "_diffrt_report"

OPENVINO_CACHE_ENV = "DIFFRT_CACHE_DIR"
OPENVINO_CPU_CONFIG = {
    # The CPU plugin defaults to bfloat16 arithmetic on CPUs that have it (errors ~1e-2); ask for float32.
    "INFERENCE_PRECISION_HINT": "f32",
    # Its subgraph JIT ("snippets", OpenVINO 2026.4) crashes the process compiling GroupNorm(x)·(1 + scale) + shift
    # with a per-sample scale — the time modulation of diffrt's ResBlock and of "scale_shift" diffusers UNets.
    "SNIPPETS_MODE": "DISABLE",
}


@dataclass
class AccelerationReport:
    """What :func:`accelerate` changed (``pipe._diffrt_report``) and what it left, with the reason."""

    backend: str
    dtype: Optional[torch.dtype]
    attention_swapped: List[str] = field(default_factory=list)  # module paths, e.g. "unet.down_blocks.0...attn1"
    attention_left: Dict[str, str] = field(default_factory=dict)  # module path: why
    schedulers_swapped: Dict[str, str] = field(default_factory=dict)  # component: "Old -> New"
    schedulers_left: Dict[str, str] = field(default_factory=dict)  # component: why
    modules_swapped: List[str] = field(default_factory=list)
    modules_left: Dict[str, str] = field(default_factory=dict)
    models_left: Dict[str, str] = field(default_factory=dict)  # pipeline attribute: why nothing was done there
    dtype_note: Optional[str] = None  # why ``dtype`` differs from the dtype asked for

    def __str__(self) -> str:
        lines = [f"diffrt acceleration: backend={self.backend}, dtype={self.dtype}",
                 *([f"  dtype: {self.dtype_note}"] if self.dtype_note else []),
                 f"  attention: {len(self.attention_swapped)} swapped, {len(self.attention_left)} left"]
        lines += [f"    left {k}: {v}" for k, v in self.attention_left.items()]
        lines += [f"  scheduler {k}: {v}" for k, v in self.schedulers_swapped.items()]
        lines += [f"  scheduler {k} left: {v}" for k, v in self.schedulers_left.items()]
        lines.append(f"  modules: {len(self.modules_swapped)} swapped, {len(self.modules_left)} left")
        lines += [f"    left {k}: {v}" for k, v in self.modules_left.items()]
        lines += [f"  {k} left: {v}" for k, v in self.models_left.items()]
        return "\n".join(lines)


class _Undo:
    """The inverse of every change, applied last-first."""

    def __init__(self):
        self._steps: List[Callable[[], None]] = []

    def add(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        while self._steps:
            self._steps.pop()()


def _check_options(pipe: Any, dtype: Any, compile: Any, backend: Any) -> str:
    import diffusers

    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, diffusers.UNet2DConditionModel):
        what = "no attribute unet" if unet is None else f"unet of type {type(unet).__name__}"
        hint = " (a torch.compile'd UNet: accelerate the pipeline before compiling, or use backend='compile')" \
            if hasattr(unet, "_orig_mod") else ""
        raise TypeError(f"accelerate(pipe) needs a diffusers pipeline whose denoiser pipe.unet is a "
                        f"UNet2DConditionModel; {type(pipe).__name__} has {what}{hint}")
    if getattr(pipe, _STATE, None) is not None:
        raise RuntimeError(f"this {type(pipe).__name__} is already accelerated; call "
                           f"diffrt.integrations.diffusers.undo(pipe) before accelerating it again")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be None or one of {[str(d) for d in DTYPES]}, got {dtype!r}")
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if compile and backend not in (None, "compile"):
        raise ValueError(f"compile=True asks for backend='compile' but backend={backend!r} was given; pass one")
    backend = "compile" if compile else (backend or "torch")
    if backend == "openvino":
        _import_openvino()
        weights = (dtype or unet.dtype)
        if weights != torch.float32:
            raise ValueError(f"backend='openvino' runs float32 UNets (OpenVINO's CPU plugin picks its own inference "
                             f"precision); got dtype={weights} — pass dtype=None or torch.float32")
        if unet.device.type != "cpu":
            raise ValueError(f"backend='openvino' runs on OpenVINO's CPU plugin; the UNet is on {unet.device} "
                             f"(pipe.to('cpu') first)")
    return backend


def accelerate(pipe: Any, *, dtype: Optional[torch.dtype] = None, compile: bool = False,
               backend: Optional[str] = None) -> Any:
    """Run ``pipe`` (a diffusers pipeline with a UNet2DConditionModel) on diffrt's kernels; returns ``pipe``.

    See the module docstring for what is swapped; ``pipe._diffrt_report`` (an :class:`AccelerationReport`)
    lists it, with the reason for everything left as it was. ``undo(pipe)`` restores the pipeline exactly.
    """
    backend = _check_options(pipe, dtype, compile, backend)
    report = AccelerationReport(backend=backend, dtype=dtype)
    if dtype is not None:
        asked = dtype
        dtype = report.dtype = compute_dtype(dtype, pipe.unet.device, what=f"accelerate(pipe, dtype={dtype})")
        if dtype != asked:
            report.dtype_note = (f"{asked} asked for, {dtype} used: this CPU has no fast bfloat16 arithmetic "
                                 f"({cpu_bf16_support()[1]})")
    changes = _Undo()
    try:
        models = _models(pipe, report)
        if dtype is not None:
            for name, module in _components(pipe):
                _cast(module, dtype, changes)
        for name, model in models.items():
            if backend == "openvino" and name == "unet":
                report.modules_left["unet.*"] = "backend='openvino' runs the whole UNet (it fuses norms itself)"
            else:
                _swap_modules(name, model, report, changes)
                if name == "unet":
                    _fuse_time_embedding(model, report, changes)
            if backend == "openvino" and name == "unet":
                report.attention_left["unet.*"] = ("backend='openvino' runs the whole UNet, attention included, "
                                                   "on OpenVINO (converted with the UNet's own processors)")
                continue
            _swap_attention(name, model, report, changes)
        _swap_schedulers(pipe, report, changes)
        if backend != "torch":
            _wrap_forward(pipe.unet, backend, changes)
    except BaseException:
        changes.run()
        raise
    object.__setattr__(pipe, _STATE, changes)
    object.__setattr__(pipe, _REPORT, report)
    return pipe


def undo(pipe: Any) -> Any:
    """Restore what :func:`accelerate` changed on ``pipe`` (the very objects that were there); returns ``pipe``."""
    changes = getattr(pipe, _STATE, None)
    if changes is None:
        raise RuntimeError(f"undo(pipe): this {type(pipe).__name__} was not accelerated by diffrt (or was undone)")
    changes.run()
    object.__delattr__(pipe, _STATE)
    object.__delattr__(pipe, _REPORT)
    return pipe


def _components(pipe: Any):
    """(name, module) for every nn.Module component of the pipeline."""
    items = pipe.components.items() if hasattr(pipe, "components") else ()
    return [(name, m) for name, m in items if isinstance(m, torch.nn.Module)]


def _models(pipe: Any, report: AccelerationReport) -> Dict[str, torch.nn.Module]:
    import diffusers

    models = {"unet": pipe.unet}
    vae = getattr(pipe, "vae", None)
    if isinstance(vae, diffusers.AutoencoderKL):
        models["vae"] = vae
    elif vae is not None:
        report.models_left["vae"] = f"{type(vae).__name__} is not an AutoencoderKL"
    for name, module in _components(pipe):
        if name not in _MODELS:
            report.models_left.setdefault(name, "accelerate touches the UNet and the VAE only (dtype= casts it)")
    return models


def _cast(module: torch.nn.Module, dtype: torch.dtype, changes: _Undo) -> None:
    """Floating-point parameters and buffers cast to ``dtype`` (as module.to(dtype), except those under a
    diffusers model's ``_keep_in_fp32_modules``), remembering each tensor so that undo restores it exactly."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    saved = []
    for path, sub in module.named_modules():
        if keep and any(k in path.split(".") for k in keep):
            continue
        for name, p in sub._parameters.items():
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                saved.append((sub._parameters, name, p, p.data))
        for name, b in sub._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                saved.append((sub._buffers, name, b, None))

    def restore():
        for table, name, obj, data in saved:
            table[name] = obj
            if data is not None:
                obj.data = data

    changes.add(restore)
    with torch.no_grad():
        for table, name, obj, data in saved:
            if data is not None:
                obj.data = data.to(dtype)  # the same Parameter object, as module.to does
            else:
                table[name] = obj.to(dtype)


def _swap_modules(model_name: str, model: torch.nn.Module, report: AccelerationReport, changes: _Undo) -> None:
    if not MODULE_SWAPS:
        return
    for path, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            kind = type(child)
            factory = MODULE_SWAPS.get(kind, MODULE_SWAPS.get(f"{kind.__module__}.{kind.__qualname__}"))
            if factory is None:
                continue
            factory = _resolve(factory)
            where = ".".join(p for p in (model_name, path, child_name) if p)
            new = factory(child)
            if new is None:
                name = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', factory)}"
                report.modules_left[where] = f"{name} declined this {type(child).__name__} (its docstring says when)"
                continue
            setattr(parent, child_name, new)
            changes.add(lambda parent=parent, child_name=child_name, child=child: setattr(parent, child_name, child))
            report.modules_swapped.append(where)


def _fuse_time_embedding(unet: torch.nn.Module, report: AccelerationReport, changes: _Undo) -> None:
    from .diffusers_norms import fuse_time_embedding

    restore, why = fuse_time_embedding(unet)
    if restore is None:
        report.modules_left["unet.time_embedding"] = why
        return
    changes.add(restore)
    report.modules_swapped.append("unet.time_embedding")


def _attention_modules(model: torch.nn.Module):
    """(path, module) for every attention module with a processor (as diffusers' attn_processors walks them)."""
    return [(path, m) for path, m in model.named_modules()
            if hasattr(m, "get_processor") and hasattr(m, "set_processor")]


def _swap_attention(model_name: str, model: torch.nn.Module, report: AccelerationReport, changes: _Undo) -> None:
    processor_class = _resolve(ATTENTION_PROCESSOR)
    processor = processor_class()
    for path, attn in _attention_modules(model):
        where = f"{model_name}.{path}"
        current = attn.processor
        kind = type(current)
        if getattr(attn, "add_q_proj", None) is not None:
            report.attention_left[where] = "joint attention (add_q_proj, SD3/Flux style) has no diffrt kernel"
        elif isinstance(current, processor_class):
            report.attention_left[where] = f"already runs {processor_class.__name__}"
        elif kind.__name__ not in _REPLACEABLE_PROCESSORS or kind.__module__ != _DIFFUSERS_PROCESSOR_MODULE:
            report.attention_left[where] = (f"its processor {kind.__module__}.{kind.__name__} is not one of diffusers' "
                                            f"standard processors {_REPLACEABLE_PROCESSORS}, which DiffrtAttnProcessor "
                                            f"reproduces")
        else:
            attn.set_processor(processor)
            # set_processor only drops an nn.Module processor from _modules; putting it back re-registers it
            changes.add(lambda attn=attn, current=current: attn.set_processor(current))
            report.attention_swapped.append(where)


def _resolve(entry: Any) -> Any:
    """``entry`` itself, or the object a "module:attr.path" string names."""
    if not isinstance(entry, str):
        return entry
    module_name, sep, path = entry.partition(":")
    if not sep or not path:
        raise ValueError(f"a registry entry given by name must read 'module:attribute', got {entry!r}")
    obj = importlib.import_module(module_name)
    for attr in path.split("."):
        obj = getattr(obj, attr)
    return obj


def _swap_schedulers(pipe: Any, report: AccelerationReport, changes: _Undo) -> None:
    for name, component in list(getattr(pipe, "components", {}).items()):
        kind = type(component)
        if not (hasattr(component, "step") and hasattr(component, "set_timesteps") and hasattr(component, "config")):
            continue
        if kind.__name__ not in FUSED_SCHEDULERS:
            report.schedulers_left[name] = f"no fused diffrt scheduler for {kind.__name__} in FUSED_SCHEDULERS"
            continue
        if not kind.__module__.startswith("diffusers."):
            report.schedulers_left[name] = f"{kind.__module__}.{kind.__name__} is not diffusers' {kind.__name__}"
            continue
        try:
            fused = _resolve(FUSED_SCHEDULERS[kind.__name__]).from_config(component.config)
        except NotImplementedError as e:  # a configuration diffrt's kernel does not run (e.g. DPM-Solver 3M)
            report.schedulers_left[name] = str(e)
            continue
        setattr(pipe, name, fused)  # DiffusionPipeline.__setattr__ also updates the pipeline's config entry
        changes.add(lambda name=name, component=component: setattr(pipe, name, component))
        report.schedulers_swapped[name] = f"{kind.__name__} -> {type(fused).__module__}.{type(fused).__name__}"


def _wrap_forward(unet: torch.nn.Module, backend: str, changes: _Undo) -> None:
    """Replace the UNet's forward (an instance attribute: the module, its config and hooks stay as they are)."""
    had_own = "forward" in unet.__dict__
    previous = unet.__dict__.get("forward")
    if backend == "compile":
        unet.forward = torch.compile(unet.forward, dynamic=False)
    else:
        unet.forward = _OpenVINOUNetForward(unet, unet.forward)

    def restore():
        if had_own:
            unet.forward = previous
        else:
            del unet.forward

    changes.add(restore)


# ---------------------------------------------------------------------------------------------- OpenVINO


def _import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError("backend='openvino' needs OpenVINO: pip install 'diffrt[openvino]' "
                          "(or pip install openvino)") from e
    return openvino


def openvino_cache_dir() -> Path:
    """Where converted OpenVINO models are kept: ``$DIFFRT_CACHE_DIR/openvino``, else ``~/.cache/diffrt/openvino``."""
    root = os.environ.get(OPENVINO_CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "diffrt") / "openvino"


def _weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the module's architecture (repr, attention processor types) and every weight's bytes."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for path, m in module.named_modules():
        if hasattr(m, "processor"):
            h.update(f"{path}:{type(m.processor).__module__}.{type(m.processor).__qualname__}".encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _FlatInputs(torch.nn.Module):
    """``fn(*args, **kwargs)`` as a module of its tensor leaves only (what a trace can take), the other
    leaves (None, numbers, strings) fixed at the values the model is converted for."""

    def __init__(self, owner: torch.nn.Module, fn: Callable, template: list, positions: List[int], spec):
        super().__init__()
        self.owner = owner  # registered, so the trace sees its parameters
        self.fn, self.template, self.positions, self.spec = fn, template, positions, spec

    def forward(self, *tensors):
        leaves = list(self.template)
        for i, t in zip(self.positions, tensors):
            leaves[i] = t
        args, kwargs = tree_unflatten(leaves, self.spec)
        return self.fn(*args, **kwargs)


class _OpenVINORunner:
    """Runs ``fn(*args, **kwargs) -> Tensor`` (a computation of ``owner``'s weights) on OpenVINO's CPU plugin:
    converted once per input signature (shapes and dtypes of the tensor arguments, values of the others),
    cached in memory and on disk under a key of the weights' digest and that signature."""

    def __init__(self, owner: torch.nn.Module, fn: Callable, cache_dir: Optional[Path] = None):
        self.ov = _import_openvino()
        self.owner, self.fn = owner, fn
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._digest: Optional[str] = None
        self._models: Dict[str, Any] = {}  # converted (or read) ov.Model per input signature
        self._compiled: Dict[tuple, Any] = {}  # (signature, thread count) -> compiled model
        self.conversions = 0  # models converted from torch (not read from the disk cache)

    def key(self, tensors: List[torch.Tensor], template: list, spec) -> str:
        if self._digest is None:
            self._digest = _weights_digest(self.owner)
        signature = repr((str(spec), [repr(x) for x in template],
                          [(tuple(t.shape), str(t.dtype)) for t in tensors],
                          torch.__version__, self.ov.__version__))
        return hashlib.sha256((self._digest + signature).encode()).hexdigest()[:32]

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        leaves, spec = tree_flatten((args, kwargs))
        positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        tensors = [leaves[i] for i in positions]
        template = [None if isinstance(x, torch.Tensor) else x for x in leaves]
        for t in tensors:
            if t.device.type != "cpu":
                raise ValueError(f"backend='openvino' runs on the CPU; got an input on {t.device}")
        key = self.key(tensors, template, spec)
        # compiled per thread count: OpenVINO runs on torch.get_num_threads() threads, as diffrt's kernels do
        threads = torch.get_num_threads()
        compiled = self._compiled.get((key, threads))
        if compiled is None:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = self._load(key, tensors, template, positions, spec)
            config = {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": threads}
            compiled = self._compiled[(key, threads)] = self.ov.Core().compile_model(model, "CPU", config)
        out = compiled([t.detach().numpy() for t in tensors])[compiled.output(0)]
        return torch.from_numpy(out.copy())

    def _load(self, key, tensors, template, positions, spec):
        ov = self.ov
        folder = (self.cache_dir or openvino_cache_dir()) / key
        xml = folder / "model.xml"
        if xml.exists():
            model = ov.Core().read_model(str(xml))
        else:
            flat = _FlatInputs(self.owner, self.fn, template, positions, spec)
            with torch.no_grad(), warnings.catch_warnings():
                # a trace bakes in shape-dependent branches, which is right: one model per input signature
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                model = ov.convert_model(flat, example_input=tuple(tensors),
                                         input=[(ov.PartialShape(list(t.shape)), getattr(ov.Type, _OV_TYPES[t.dtype]))
                                                for t in tensors])
            self.conversions += 1
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=key, dir=folder.parent))
            ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)  # keep float32 weights
            try:
                staging.rename(folder)
            except OSError:  # another process cached the same model first
                shutil.rmtree(staging, ignore_errors=True)
        return model


_OV_TYPES: Dict[torch.dtype, str] = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.bool: "boolean",
}


class _OpenVINOUNetForward:
    """A UNet2DConditionModel's forward run by OpenVINO: same arguments, same output type."""

    def __init__(self, unet: torch.nn.Module, forward: Callable):
        self.forward = forward
        self.signature = inspect.signature(forward)
        self.runner = _OpenVINORunner(unet, self._sample)

    def _sample(self, *args, **kwargs):
        return self.forward(*args, **kwargs, return_dict=False)[0]

    def __call__(self, *args, **kwargs):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        bound = self.signature.bind(*args, **kwargs)
        return_dict = bound.arguments.pop("return_dict", True)
        arguments = dict(bound.arguments)
        timestep = arguments.get("timestep")
        if timestep is not None and not isinstance(timestep, torch.Tensor):
            # a Python number becomes an input, not a constant of the converted model
            kind = torch.float32 if isinstance(timestep, float) else torch.int64
            arguments["timestep"] = torch.tensor(timestep, dtype=kind)
        sample = self.runner(**arguments)
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


# ---------------------------------------------------------------------------------------------- diffrt denoisers


class AcceleratedDenoiser(torch.nn.Module):
    """A diffrt denoiser whose calls run through torch.compile or OpenVINO (see :func:`accelerate_denoiser`)."""

    def __init__(self, model: Any, backend: str, cache_dir: Optional[Union[str, Path]] = None):
        super().__init__()
        self.model = model
        self.backend = backend
        self.prediction_type, self.in_channels, self.out_channels = (
            model.prediction_type, model.in_channels, model.out_channels)
        if backend == "compile":
            run = torch.compile(model, dynamic=False)
        else:
            run = _OpenVINORunner(model, model, cache_dir)
        object.__setattr__(self, "_run", run)  # not a submodule: the weights are self.model's

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return self._run(x_t, t, cond)

    def __getattr__(self, name: str) -> Any:
        # the model's own attributes (config, condition, ...) that pipelines read, e.g. unCLIP's decoder.config
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


def accelerate_denoiser(model: Any, *, backend: str, cache_dir: Optional[Union[str, Path]] = None
                        ) -> AcceleratedDenoiser:
    """A diffrt :class:`~diffrt.Denoiser` (diffrt's UNet, a DiffusersUNetDenoiser, ...) run by ``backend``:
    "compile" (``torch.compile(model, dynamic=False)``) or "openvino" (converted per input signature, an
    nn.Module of float32 CPU weights; cached under ``cache_dir`` or :func:`openvino_cache_dir`). The result
    is a denoiser for DiffEdit, Imagen Editor and unCLIP; for Imagic accelerate the fine-tuned
    ``pipe.model`` after ``fit`` (neither backend trains)."""
    check_denoiser(model)
    if backend not in ("compile", "openvino"):
        raise ValueError(f"backend must be 'compile' or 'openvino', got {backend!r}")
    if backend == "openvino":
        _import_openvino()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"backend='openvino' converts an nn.Module; got {type(model).__name__}")
        for name, p in model.named_parameters():
            if p.dtype != torch.float32 or p.device.type != "cpu":
                raise ValueError(f"backend='openvino' converts float32 CPU models; parameter {name} is "
                                 f"{p.dtype} on {p.device}")
    return AcceleratedDenoiser(model, backend, cache_dir)
