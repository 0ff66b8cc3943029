"""Where and in which precision the model runs: a pure decision, testable without a GPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from predictor.errors import ConfigError

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DevicePlan:
    """The device, the accelerate device map (model parallel) and the weights' dtype."""

    device: str
    dtype: torch.dtype
    device_map: str | None = None

    @property
    def is_cuda(self) -> bool:
        """True when the model runs on one or more GPUs."""
        return self.device.startswith("cuda")


def chooses_cuda(requested: str, cuda_devices: int | None = None) -> bool:
    """Whether handler.device `requested` runs on a GPU, given the visible GPUs (default: this machine's)."""
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return cuda_devices > 0 and requested in ("auto", "cuda")


def plan_device(
    requested: str,
    dtype: str,
    model_parallel: bool,
    cuda_devices: int,
    bf16_supported: bool = True,
) -> DevicePlan:
    """Choose device, dtype and device map from the config and what the machine has.

    Half precision needs a GPU: on CPU it falls back to float32 with a log line, so one
    model-config.yaml serves both CPU and GPU deployments. model_parallel spreads the layers
    over every visible GPU with accelerate's `device_map="auto"` (any architecture).
    """
    if requested == "cuda" and cuda_devices == 0:
        raise ConfigError("handler.device: 'cuda' requested but no CUDA device is visible")
    use_cuda = chooses_cuda(requested, cuda_devices)
    device = "cuda:0" if use_cuda else "cpu"
    if dtype == "auto":
        torch_dtype = torch.float32
    elif dtype in ("float16", "bfloat16") and not use_cuda:
        logger.info("handler.dtype %s needs a GPU; running float32 on CPU", dtype)
        torch_dtype = torch.float32
    elif dtype == "bfloat16" and not bf16_supported:
        logger.info("this GPU has no bfloat16; using float16")
        torch_dtype = torch.float16
    else:
        torch_dtype = _DTYPES[dtype]
    device_map = None
    if model_parallel:
        if cuda_devices > 1 and use_cuda:
            device_map = "auto"
        else:
            logger.info("handler.model_parallel needs more than one GPU (%d visible); running on %s",
                        cuda_devices, device)
    return DevicePlan(device=device, dtype=torch_dtype, device_map=device_map)


def detect_device(requested: str, dtype: str, model_parallel: bool) -> DevicePlan:
    """plan_device for this machine."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bf16 = bool(cuda) and torch.cuda.is_bf16_supported()
    plan = plan_device(requested, dtype, model_parallel, cuda, bf16)
    logger.info("device %s, dtype %s%s", plan.device, str(plan.dtype).removeprefix("torch."),
                f", device_map={plan.device_map}" if plan.device_map else "")
    return plan


def attention_implementation(better_transformer: bool, plan: DevicePlan) -> str | None:
    """The attention kernel for `BetterTransformer: true` (optimum's BetterTransformer is gone upstream).

    Flash attention 2 on a GPU when the package is installed and the weights are half precision,
    else PyTorch's scaled-dot-product attention, the fastest path transformers offers on CPU.
    """
    if not better_transformer:
        return None
    if plan.is_cuda and plan.dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401
        except ModuleNotFoundError:
            pass
        else:
            return "flash_attention_2"
    return "sdpa"
