"""The models a training run starts from: loaded, checked, and a student made from a teacher.

A base model is a GGUF file (read by transformers' GGUF loader, dequantised to float32: the
shipped SmolLM2) or a Hugging Face folder with safetensors weights. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")  # as the transformers backend decides


class IncompatibleModels(ValueError):
    """A teacher and a student that cannot be distilled one into the other."""


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file (by its magic bytes)."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def _source(path: Path) -> dict[str, Any]:
    if is_gguf(path):
        return {
            "pretrained_model_name_or_path": str(path.parent),
            "gguf_file": path.name,
            "local_files_only": True,
        }
    if not path.is_dir():
        raise ValueError(f"{path} is neither a Hugging Face model folder nor a GGUF file")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"{path} holds no safetensors weights (pickle weights are refused)")
    return {"pretrained_model_name_or_path": str(path), "local_files_only": True}


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a GGUF file or a Hugging Face folder."""
    return AutoTokenizer.from_pretrained(**_source(path))


def load_causal_lm(path: Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a GGUF file or a Hugging Face folder. The model is in
    ``dtype`` (a GGUF's quantised weights are dequantised); raises ``ValueError`` for a model
    that is not a causal language model (an embedding model, a classifier)."""
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    source = _source(path)
    if "gguf_file" in source:  # each read of a GGUF's metadata takes seconds: two, not three
        tokenizer = AutoTokenizer.from_pretrained(**source)
        # Dense weights, and no quantizer left on the model: one would refuse to train or to
        # save_pretrained ("quantized with GGUF and not serializable").
        dense = GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(
            **source, dtype=dtype, quantization_config=dense
        )
        return model, tokenizer
    config = AutoConfig.from_pretrained(**source)
    architecture = (getattr(config, "architectures", None) or [""])[0]
    if not architecture.endswith(CAUSAL_ARCHITECTURES):
        raise ValueError(
            f"{path.name} is not a causal language model (its architecture is "
            f"{architecture or 'not named'}): it cannot be trained to generate"
        )
    tokenizer = AutoTokenizer.from_pretrained(**source)
    model = AutoModelForCausalLM.from_pretrained(
        **source, config=config, dtype=dtype, use_safetensors=True
    )
    return model, tokenizer


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``, tied ones counted once."""
    return sum(p.numel() for p in model.parameters())


def _layer_list(model: nn.Module, n_layers: int) -> str:
    """The dotted name of the model's list of decoder layers (``model.layers`` in Llama)."""
    found: list[str] = [
        str(name)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if len(found) != 1:
        raise ValueError(f"cannot tell which module list holds the {n_layers} decoder layers")
    return found[0]


def student_from_teacher(teacher: PreTrainedModel) -> PreTrainedModel:
    """A student with every other decoder layer of ``teacher`` (layers 0, 2, 4, ...), as
    DistilGPT2 and DistilBERT were made: the embeddings, final norm and head are copied, as is
    each kept layer; the config's ``num_hidden_layers`` is halved (rounded up)."""
    n_layers = int(teacher.config.num_hidden_layers)
    if n_layers < 2:
        raise ValueError("the teacher has fewer than two layers: there is no half to keep")
    keep = list(range(0, n_layers, 2))
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_layers:
        config.layer_types = [layer_types[i] for i in keep]
    prefix = _layer_list(teacher, n_layers)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    source = teacher.state_dict()
    student = type(teacher)(config)
    mapped: dict[str, torch.Tensor] = {}
    for key in student.state_dict():
        match = pattern.match(key)
        teacher_key = f"{prefix}.{keep[int(match[1])]}.{match[2]}" if match else key
        mapped[key] = source[teacher_key].detach().clone()
    student.load_state_dict(mapped, strict=True)
    return nn.Module.to(student, next(teacher.parameters()).dtype)


def _logit_width(model: nn.Module) -> int:
    head = model.get_output_embeddings()  # type: ignore[operator]
    return int(head.weight.shape[0])


def check_distillation_pair(
    teacher: Any, teacher_tokenizer: Any, student: Any, student_tokenizer: Any
) -> None:
    """Raise :class:`IncompatibleModels` unless the student can learn from the teacher's
    logits: the same vocabulary (every token the same id), the same special tokens, logits
    of the same width, and a student no larger than the teacher."""
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise IncompatibleModels("the teacher and the student have different tokenizers")
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(teacher_tokenizer, name) != getattr(student_tokenizer, name):
            raise IncompatibleModels(
                f"the teacher and the student have different special tokens ({name})"
            )
    if _logit_width(teacher) != _logit_width(student):
        raise IncompatibleModels(
            f"the teacher's logits have {_logit_width(teacher)} entries and the student's "
            f"{_logit_width(student)}"
        )
    if parameter_count(student) > parameter_count(teacher):
        raise IncompatibleModels(
            f"the student ({parameter_count(student):,} parameters) is larger than the "
            f"teacher ({parameter_count(teacher):,})"
        )
