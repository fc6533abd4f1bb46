"""Write a Llama-architecture transformers model as an F16 GGUF file that llama.cpp serves.

The layout is llama.cpp's (as its ``convert_hf_to_gguf.py`` writes LLaMA models): tensors under
llama.cpp's names, 2-D weights in F16 and norms in F32, the output matrix left out when it is
the token embedding, and the Q and K projections permuted back to the rotary layout llama.cpp
uses (Hugging Face rotates the two halves of a head; llama.cpp rotates adjacent pairs, and
transformers undoes this permutation when it loads a GGUF).

Tokenizer and chat template: copied key by key from the GGUF the base model came from, when
there is one; otherwise built from the Hugging Face tokenizer (byte-level BPE only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import gguf
import numpy as np

from lmaas.training.gguf_source import read_source_metadata

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ARCH: Final = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]

# general.* keys describe the weights' own file, so they are written anew rather than copied.
_GENERAL_NOT_COPIED: Final = frozenset(
    {
        gguf.Keys.General.ARCHITECTURE,
        gguf.Keys.General.FILE_TYPE,
        gguf.Keys.General.QUANTIZATION_VERSION,
        gguf.Keys.General.ALIGNMENT,
        gguf.Keys.General.SIZE_LABEL,
        gguf.Keys.General.NAME,
        gguf.Keys.General.TYPE,
    }
)

# llama.cpp picks its pre-tokenizer (the regex split before BPE) by name. Its converter names
# it from the hash of the token ids of one fixed text; these are the hashes of the BPE families
# this exporter expects (from llama.cpp's convert_hf_to_gguf.py).
_PRE_TOKENIZER_CHECK_TEXT: Final = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天\uff5e ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS: Final = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}


class ExportError(RuntimeError):
    """A model or tokenizer this exporter cannot write, or a quantization that failed."""


@dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF file holds, for logs and checks."""

    architecture: str | None
    tensor_count: int
    file_type: str | None  # llama.cpp's name without MOSTLY_: "F16", "Q4_0", "Q4_K_M", ...
    context_length: int | None
    size_bytes: int
    name: str | None
    has_chat_template: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gguf_summary(path: Path) -> GGUFSummary:
    """Architecture, tensor count and file type of a GGUF file this server wrote or trusts;
    raises ``ExportError`` when it cannot be read as GGUF."""
    try:
        meta = read_source_metadata(path)
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path.name} is not a readable GGUF file: {exc}") from exc
    arch = meta.get(gguf.Keys.General.ARCHITECTURE)
    context = meta.get(f"{arch}.context_length") if arch else None
    name = meta.get(gguf.Keys.General.NAME)
    return GGUFSummary(
        architecture=str(arch) if arch is not None else None,
        tensor_count=meta.tensor_count,
        file_type=_file_type_name(meta.get(gguf.Keys.General.FILE_TYPE)),
        context_length=int(context) if context is not None else None,
        size_bytes=path.stat().st_size,
        name=str(name) if name is not None else None,
        has_chat_template=meta.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) is not None,
    )


def _file_type_name(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type {value}"


def export_gguf_f16(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_path: Path,
    *,
    source_gguf: Path | None = None,
    name: str | None = None,
) -> GGUFSummary:
    """Write ``model`` (a ``LlamaForCausalLM``, LoRA merged) to ``out_path`` as an F16 GGUF.

    With ``source_gguf`` (the GGUF the base model was loaded from) every ``tokenizer.*`` key and
    the descriptive ``general.*`` keys are copied from it and ``tokenizer`` may be ``None``;
    without it the tokenizer metadata is built from ``tokenizer`` (byte-level BPE).
    ``general.name`` is ``name`` (else the source's). The file appears whole or not at all.
    Raises ``ExportError`` for what it cannot export.
    """
    hparams = _llama_hparams(model)
    n_vocab = hparams.vocab_size
    writer = gguf.GGUFWriter(None, ARCH)
    if source_gguf is not None:
        source_name = _copy_source_metadata(writer, source_gguf, n_vocab)
    elif tokenizer is not None:
        source_name = None
        _write_hf_tokenizer(writer, tokenizer, n_vocab)
    else:
        raise ExportError("exporting a GGUF needs the source GGUF or a tokenizer")
    if general_name := name or source_name:
        writer.add_name(general_name)
    writer.add_type(gguf.GGUFType.MODEL)
    hparams.write(writer)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, data in _llama_tensors(model, hparams):
        writer.add_tensor(tensor_name, data)
    _write_atomically(writer, out_path)
    return gguf_summary(out_path)


@dataclass(frozen=True)
class _LlamaHParams:
    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int
    rope_freq_base: float
    rms_eps: float
    vocab_size: int

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_vocab_size(self.vocab_size)
        writer.add_context_length(self.context_length)
        writer.add_embedding_length(self.embedding_length)
        writer.add_block_count(self.block_count)
        writer.add_feed_forward_length(self.feed_forward_length)
        writer.add_head_count(self.head_count)
        writer.add_head_count_kv(self.head_count_kv)
        writer.add_rope_dimension_count(self.head_dim)
        if self.head_dim * self.head_count != self.embedding_length:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        writer.add_rope_freq_base(self.rope_freq_base)
        writer.add_layer_norm_rms_eps(self.rms_eps)


def _llama_hparams(model: PreTrainedModel) -> _LlamaHParams:
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        kind = getattr(config, "model_type", None) or type(model).__name__
        raise ExportError(f"GGUF export supports Llama-architecture models only, not {kind!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError("GGUF export does not support Llama models with bias terms")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    legacy_scaling = getattr(config, "rope_scaling", None)
    if isinstance(legacy_scaling, dict):
        rope = {**legacy_scaling, **rope}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"GGUF export does not support RoPE scaling {rope['rope_type']!r}")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    n_head = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // n_head)
    if head_dim % 2:
        raise ExportError(f"RoPE needs an even head size, not {head_dim}")
    return _LlamaHParams(
        context_length=int(config.max_position_embeddings),
        embedding_length=hidden,
        block_count=int(config.num_hidden_layers),
        feed_forward_length=int(config.intermediate_size),
        head_count=n_head,
        head_count_kv=int(getattr(config, "num_key_value_heads", None) or n_head),
        head_dim=head_dim,
        rope_freq_base=float(theta),
        rms_eps=float(config.rms_norm_eps),
        vocab_size=int(cast(Any, model.get_input_embeddings()).num_embeddings),
    )


def rotary_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection from Hugging Face's rotary layout (each head's
    first half rotates with its second half) to llama.cpp's (adjacent rows rotate together).
    ``n_head`` is the projection's own head count (the KV heads for K)."""
    rows = weight.shape[0]
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _llama_tensors(model: PreTrainedModel, hparams: _LlamaHParams) -> list[tuple[str, np.ndarray]]:
    """The model's tensors under llama.cpp's names, as the arrays to write: F16 matrices, F32
    vectors (norms)."""
    state = model.state_dict()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hparams.block_count)
    embed = state.get("model.embed_tokens.weight")
    head = state.get("lm_head.weight")
    tied = head is not None and embed is not None and _same_tensor(head, embed)
    out: list[tuple[str, np.ndarray]] = []
    for hf_name, value in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"tensor {hf_name!r} has no place in a llama GGUF (LoRA not merged?)")
        data = value.detach().to("cpu").float().numpy()
        if gguf_name.endswith("attn_q.weight"):
            data = rotary_permute(data, hparams.head_count)
        elif gguf_name.endswith("attn_k.weight"):
            data = rotary_permute(data, hparams.head_count_kv)
        if data.ndim <= 1 or gguf_name.endswith("_norm.weight"):
            out.append((gguf_name, np.ascontiguousarray(data, dtype=np.float32)))
        else:
            out.append((gguf_name, np.ascontiguousarray(data, dtype=np.float16)))
    return out


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.data_ptr() == b.data_ptr() or bool((a == b).all()))


def _copy_source_metadata(writer: gguf.GGUFWriter, source: Path, n_vocab: int) -> str | None:
    """Copy the source GGUF's tokenizer and descriptive keys; return its ``general.name``."""
    try:
        meta = read_source_metadata(source)
    except (ValueError, OSError) as exc:
        raise ExportError(f"cannot read the source GGUF {source.name}: {exc}") from exc
    tokens = meta.get(gguf.Keys.Tokenizer.LIST)
    if tokens is None:
        raise ExportError(f"the source GGUF {source.name} has no tokenizer")
    if len(tokens) != n_vocab:
        raise ExportError(
            f"the model has {n_vocab} token embeddings but the source GGUF's tokenizer has "
            f"{len(tokens)} tokens"
        )
    for key, entry in meta.entries.items():
        if _copied(key) and not (entry.type == gguf.GGUFValueType.ARRAY and not entry.value):
            writer.add_key_value(key, entry.value, entry.type, sub_type=entry.sub_type)
    name = meta.get(gguf.Keys.General.NAME)
    return str(name) if name is not None else None


def _copied(key: str) -> bool:
    if key.startswith("tokenizer."):
        return True
    return key.startswith("general.") and key not in _GENERAL_NOT_COPIED


def _write_hf_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, n_vocab: int
) -> None:
    """Tokenizer metadata for a byte-level BPE (GPT-2 style) Hugging Face tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model_type = type(backend.model).__name__ if backend is not None else None
    if model_type != "BPE" or not _is_byte_level(tokenizer):
        raise ExportError(
            "GGUF export builds tokenizer metadata for byte-level BPE tokenizers only; "
            "export from a base that came from a GGUF to copy its tokenizer instead"
        )
    tokens, types = _token_list(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="lmaas-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(str(tokenizer.chat_template))


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    text = tokenizer.backend_tokenizer.to_str()
    return '"ByteLevel"' in text


def _token_list(tokenizer: PreTrainedTokenizerBase, n_vocab: int) -> tuple[list[str], list[int]]:
    vocab: dict[str, int] = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= n_vocab:
        raise ExportError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model only "
            f"{n_vocab} token embeddings"
        )
    by_id = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(n_vocab):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(token)
            special = added[token_id].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _pre_tokenizer(tokenizer: PreTrainedTokenizerBase) -> str:
    ids = tokenizer.encode(_PRE_TOKENIZER_CHECK_TEXT)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    pre = _PRE_TOKENIZERS.get(digest)
    if pre is None:
        log.warning("unknown BPE pre-tokenizer (hash %s); llama.cpp will use its default", digest)
        return "default"
    return pre


def _write_atomically(writer: gguf.GGUFWriter, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    try:
        writer.write_header_to_file(path=partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out_path)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
