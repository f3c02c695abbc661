"""`--torchcompile [BACKEND]` and `--torchcompile-mode`, as timm's train.py and validate.py take them: the check of
the values, and the settings under which a compiled BlockMoE model runs its whole job compiled (training and
evaluation both use them)."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Optional

from bench.core.errors import UserError

if TYPE_CHECKING:  # torch and timm_moe load where a model is compiled: a parser reads the default without them
    from torch import nn

# timm's `--torchcompile` alone means inductor (argparse const); YAML `torchcompile: true` says the same
TORCHCOMPILE_DEFAULT = 'inductor'


# backends torch registers whatever is installed, and the package each imports only when it compiles
_BACKEND_PACKAGES = {'tvm': 'tvm', 'openxla': 'torch_xla', 'openxla_eval': 'torch_xla', 'onnxrt': 'onnxruntime',
                     'tensorrt': 'torch_tensorrt', 'torch_tensorrt': 'torch_tensorrt',
                     'ipex': 'intel_extension_for_pytorch'}


def _installed(backend: str) -> bool:
    import importlib.util
    package = _BACKEND_PACKAGES.get(backend)
    return package is None or importlib.util.find_spec(package) is not None


def check_torchcompile(backend: Optional[str], mode: Optional[str]) -> None:
    """Refuse, in one line, a backend torch.compile does not know or cannot import, or a mode its backend does not
    take.

    Any registered backend whose package is installed is accepted, as `torch.compile` accepts it; the message
    lists the usable ones of those `torch._dynamo.list_backends()` recommends and names the debugging ones.
    """
    if backend is None:
        if mode is not None:
            raise UserError(f'--torchcompile-mode {mode!r} needs --torchcompile (the backend to compile with)')
        return
    import torch._dynamo
    if backend not in torch._dynamo.list_backends(exclude_tags=()) or not _installed(backend):
        debug = [b for b in ('eager', 'aot_eager') if b in torch._dynamo.list_backends(exclude_tags=())]
        usable = [b for b in torch._dynamo.list_backends() if _installed(b)]
        what = (f'needs the package {_BACKEND_PACKAGES[backend]}, which is not installed' if backend in
                torch._dynamo.list_backends(exclude_tags=()) else 'is not a torch.compile backend')
        raise UserError(f'--torchcompile {backend!r} {what}; choose one of {", ".join(usable)} '
                        f'(torch._dynamo.list_backends()), or for debugging {", ".join(debug)}')
    if mode is None:
        return
    if backend != 'inductor':  # the modes are inductor's; another backend ignores or rejects them
        raise UserError(f'--torchcompile-mode {mode!r} is an inductor mode; --torchcompile {backend} takes none')
    from torch._inductor import list_mode_options
    if mode not in list_mode_options():
        raise UserError(f'--torchcompile-mode {mode!r} is not an inductor mode; choose one of '
                        f'{", ".join(list_mode_options())}')


@contextlib.contextmanager
def torchcompile_settings(num_experts: int, retain_graph: bool = False, cpu: bool = False) -> Iterator[None]:
    """The dynamo and AOT-autograd settings under which compiled BlockMoE models run their whole job compiled.

    With torch's defaults the job still gives eager's numbers, but parts of it quietly run eagerly:
    - BlockMoE counts its images and training forwards in Python ints on the module; dynamo guards module
      ints as constants, so every forward recompiled until the recompile limit, after which that code ran
      eagerly for good. Here they are dynamic.
    - Each forced expert (`timm_moe.force_expert`), grad mode and batch shape is a specialisation of its own:
      the per-expert subpaths of an 8-expert model pass torch's limit of 8 recompiles per function. The
      limit here grows with the number of experts.
    - `retain_graph=True` (the evaluation's gradient checks backward twice through one forward): compiled
      backwards donate their saved buffers by default, which forbids a second backward.
    - On CPU, inductor's layout optimisation (convolutions converted to channels_last) gives wrong weight
      gradients, and now and then a corrupted heap (glibc abort), on torch 2.14.1: a ResNet-18 at width 4,
      dense or MoE, got a wrong gradient for layer2.0.downsample.0 (1x1, stride 2, 4 to 8 channels) in 3 of 6
      fresh processes with it on, and in 0 of 8 with it off (docs/ECOSYSTEM.md). Eager is right, so on CPU
      it is off. CUDA keeps it: it is where channels_last pays, and the bug was not seen there.

    Args:
        num_experts: Experts per MoE layer (`timm_moe.num_experts(model)`; 0 for a dense model).
        retain_graph: Turn buffer donation off.
        cpu: The model runs on the CPU (turns inductor's layout optimisation off).
    """
    import torch._dynamo
    import torch._functorch.config
    import torch._inductor.config
    limit = max(torch._dynamo.config.recompile_limit, 2 * (num_experts + 1) + 8)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True, recompile_limit=limit))
        if retain_graph:
            stack.enter_context(torch._functorch.config.patch(donated_buffer=False))
        if cpu:
            stack.enter_context(torch._inductor.config.patch(layout_optimization=False))
        yield


@contextlib.contextmanager
def compiled_in_place(model: nn.Module, backend: Optional[str], mode: Optional[str]) -> Iterator[nn.Module]:
    """`model` compiled in place, under the settings a compiled BlockMoE needs (no-op without a backend).

    In place (`nn.Module.compile`), not `torch.compile`'s wrapper: the module tree stays the eager one, so
    routing keys ('model.layer4.1'), `unwrap` and weight digests are those of an eager evaluation.
    """
    if backend is None:
        yield model
        return
    import torch._dynamo

    import timm_moe
    torch._dynamo.reset()  # as timm's validate.py: nothing compiled earlier in this process counts
    model.compile(backend=backend, mode=mode)
    # retain_graph: the gradient-masking checks backward twice through one forward
    on_cpu = all(p.device.type == 'cpu' for p in model.parameters())
    with torchcompile_settings(timm_moe.num_experts(model), retain_graph=True, cpu=on_cpu):
        yield model


def compile_for_training(ddp: nn.Module, net: nn.Module, backend: Optional[str], mode: Optional[str],
                         distributed: bool) -> tuple:
    """(step_net, local_net): the training forward (through DDP) and the attack's and clean accuracy's forward
    (without DDP), compiled by `--torchcompile` as timm's train.py does it: after the DDP wrap, with the EMA and
    the checkpoints on the raw module (so no `_orig_mod.` key reaches a state_dict). No backend: both as given."""
    if not backend:
        return ddp, net
    import torch._dynamo
    torch._dynamo.reset()  # as timm's validate.py: nothing compiled earlier in this process counts
    step_net = torch.compile(ddp, backend=backend, mode=mode)
    # without DDP the attack's backward must not all-reduce: a distributed run compiles the bare net too
    local_net = torch.compile(net, backend=backend, mode=mode) if distributed else step_net
    return step_net, local_net
