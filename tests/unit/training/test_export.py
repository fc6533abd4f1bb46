"""Exports of a tiny random Llama over SmolLM2's vocabulary: the F16 GGUF gives llama.cpp and
transformers the PyTorch model's logits, quantized files stay close, and the Hugging Face folder
and the LoRA adapter load back."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lmaas.config import DEFAULT_MODEL, SHIPPED_MODELS, find_package_file
from lmaas.store.gguf import GGUFMetadata, read_gguf_metadata
from lmaas.training.export import (
    ExportError,
    export_gguf_f16,
    gguf_summary,
    quantize_gguf,
    save_adapter,
    save_hf_folder,
)

# Ids spread over the vocabulary; positions past the first make RoPE (and so the Q/K layout)
# matter.
TOKENS = [1, 520, 3000, 42, 9000, 17, 260, 48000, 77, 1234]
N_LAYERS = 2
# token_embd, output_norm, and per block: attn_norm, attn_q/k/v/output, ffn_norm/gate/up/down
N_TENSORS = 2 + 9 * N_LAYERS


@pytest.fixture(scope="module")
def source_gguf() -> Path:
    shipped = SHIPPED_MODELS[DEFAULT_MODEL]
    return find_package_file(shipped.package, shipped.file)


@pytest.fixture(scope="module")
def smol_tokenizer(source_gguf: Path) -> Any:
    return AutoTokenizer.from_pretrained(
        str(source_gguf.parent), gguf_file=source_gguf.name, local_files_only=True
    )


def read_metadata(path: Path) -> GGUFMetadata:
    """The file's metadata, long arrays included (the model store's parser: an independent
    reader from the exporter's)."""
    return read_gguf_metadata(path, keep_array=1 << 17)


def source_field(path: Path, key: str) -> Any:
    return read_metadata(path).metadata.get(key)


def scaled_llama(vocab_size: int) -> LlamaForCausalLM:
    """A random Llama (grouped-query attention, tied embeddings) with weights scaled up (std 0.1
    rather than 0.02, norms spread around 1) so that attention is not uniform and the logits
    are far from zero: a misplaced row changes them. (Larger still, and F16's rounding alone
    nears the 1e-2 bound.)"""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.1,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def tiny_model(source_gguf: Path) -> LlamaForCausalLM:
    """Over SmolLM2's vocabulary, so that the shipped GGUF's tokenizer fits it."""
    return scaled_llama(read_metadata(source_gguf).array_lengths[gguf.Keys.Tokenizer.LIST])


@pytest.fixture(scope="module")
def small_model(tokenizer: Any) -> LlamaForCausalLM:
    """Over the small test tokenizer's vocabulary (conftest.py): quick for transformers' GGUF
    reader, which takes seconds per pass over a 49k-token vocabulary."""
    return scaled_llama(len(tokenizer))


@pytest.fixture(scope="module")
def f16_path(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, source_gguf: Path) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    export_gguf_f16(tiny_model, None, path, source_gguf=source_gguf, name="tiny-ft")
    return path


def torch_logits(model: Any, tokens: list[int] = TOKENS) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0]
    result: np.ndarray = out.float().numpy()
    return result


# llama.cpp runs in a child process: in the test process, another test's use of the backend
# (tests/integration/test_llamacpp_grammar.py loads and frees it) left a later model load
# crashing the whole run (a segmentation fault in llama_model_load).
_LOGITS = """
import json, sys
import numpy as np
from llama_cpp import Llama
path, tokens, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = Llama(model_path=path, n_ctx=32, n_batch=32, n_threads=1, n_threads_batch=1,
            logits_all=True, verbose=False)
llm.eval(tokens)
np.save(out, np.array(llm.scores[: len(tokens)], dtype=np.float32))
llm.close()
"""
_TOKENIZE = """
import json, sys
from llama_cpp import Llama
path, texts = sys.argv[1], json.loads(sys.argv[2])
llm = Llama(model_path=path, n_ctx=32, n_threads=1, vocab_only=True, verbose=False)
print(json.dumps([llm.tokenize(t.encode(), add_bos=False, special=s) for t, s in texts]))
llm.close()
"""


def _child(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def llama_logits(path: Path, tokens: list[int] = TOKENS) -> np.ndarray:
    out = path.with_name(path.name + ".logits.npy")
    _child(_LOGITS, str(path), json.dumps(tokens), str(out))
    result: np.ndarray = np.load(out)
    return result


def llama_tokenize(path: Path, texts: list[tuple[str, bool]]) -> list[list[int]]:
    found: list[list[int]] = json.loads(_child(_TOKENIZE, str(path), json.dumps(texts)))
    return found


def test_f16_export_gives_llama_cpp_the_pytorch_logits(tiny_model: Any, f16_path: Path) -> None:
    expected = torch_logits(tiny_model)
    assert expected.std() > 0.5  # the comparison below is not between near-zero numbers
    got = llama_logits(f16_path)
    assert np.abs(got - expected).max() < 1e-2


def inverse_rotary_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, -1).transpose(1, 2).reshape(weight.shape)


def test_without_the_qk_permutation_llama_cpp_disagrees(
    tiny_model: Any, source_gguf: Path, tmp_path: Path
) -> None:
    """The exporter applied to Q and K pre-scrambled by the inverse permutation writes them in
    Hugging Face's layout: then only the first position (where RoPE is the identity) agrees."""
    scrambled = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for layer in scrambled.model.layers:
            q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
            q.copy_(inverse_rotary_permute(q, 4))
            k.copy_(inverse_rotary_permute(k, 2))
    path = tmp_path / "unpermuted.gguf"
    export_gguf_f16(scrambled, None, path, source_gguf=source_gguf)
    diff = np.abs(llama_logits(path) - torch_logits(tiny_model)).max(axis=1)
    assert diff[0] < 1e-2
    assert diff[1:].max() > 0.5


def test_f16_export_metadata_and_tokenizer_come_from_the_source(
    f16_path: Path, source_gguf: Path
) -> None:
    summary = gguf_summary(f16_path)
    assert summary.architecture == "llama"
    assert summary.file_type == "F16"
    assert summary.tensor_count == N_TENSORS
    assert summary.name == "tiny-ft"
    assert summary.has_chat_template
    exported, source = read_metadata(f16_path), read_metadata(source_gguf)
    types = {t.name: t.type_name for t in exported.tensors}
    assert "output.weight" not in types  # tied embeddings
    assert {"token_embd.weight", "blk.1.attn_k.weight", "blk.1.ffn_down.weight"} <= set(types)
    assert types["blk.0.attn_q.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    expected = {
        "llama.block_count": N_LAYERS,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.context_length": 256,
        "llama.rope.dimension_count": 16,
        "general.file_type": 1,
    }
    for key, value in expected.items():
        assert exported.metadata[key] == value, key
    tokenizer_keys = {k for k in source.metadata if k.startswith("tokenizer.")}
    assert {"tokenizer.chat_template", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"} <= (
        tokenizer_keys
    )
    for key in tokenizer_keys:
        assert exported.metadata.get(key) == source.metadata[key], key
    assert source.metadata["general.name"] != "tiny-ft"


def test_transformers_reads_the_export_back(
    small_model: Any, tokenizer: Any, tmp_path: Path
) -> None:
    """Exported with the tokenizer built from the Hugging Face one: llama.cpp and transformers
    (which undoes the Q/K permutation on loading) both give the PyTorch model's logits."""
    path = tmp_path / "small.gguf"
    export_gguf_f16(small_model, tokenizer, path)
    tokens = [0, 5, 300, 17, 42, 250, 9, 100]
    expected = torch_logits(small_model, tokens)
    assert np.abs(llama_logits(path, tokens) - expected).max() < 1e-2
    loaded = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, local_files_only=True, dtype=torch.float32
    )
    assert loaded.config.tie_word_embeddings
    assert loaded.config.num_key_value_heads == 2
    assert np.abs(torch_logits(loaded.eval(), tokens) - expected).max() < 1e-2


@pytest.fixture(scope="module")
def quantized(f16_path: Path) -> Iterator[dict[str, Path]]:
    paths = {}
    for qtype in ("Q8_0", "Q4_0", "Q4_1", "Q4_K_M"):
        paths[qtype] = f16_path.with_name(f"tiny-{qtype}.gguf")
        quantize_gguf(f16_path, paths[qtype], qtype)
    yield paths


@pytest.mark.parametrize(
    ("qtype", "bound"), [("Q8_0", 0.05), ("Q4_0", 0.35), ("Q4_1", 0.35), ("Q4_K_M", 0.2)]
)
def test_quantized_files_are_smaller_and_close(
    tiny_model: Any, f16_path: Path, quantized: dict[str, Path], qtype: str, bound: float
) -> None:
    path = quantized[qtype]
    summary = gguf_summary(path)
    assert summary.file_type == qtype
    assert summary.tensor_count == N_TENSORS
    assert summary.has_chat_template
    assert path.stat().st_size < 0.7 * f16_path.stat().st_size
    expected = torch_logits(tiny_model)
    relative_error = np.linalg.norm(llama_logits(path) - expected) / np.linalg.norm(expected)
    assert relative_error < bound  # measured: Q8_0 0.027, Q4_0 0.24, Q4_1 0.22, Q4_K_M 0.11


def test_a_quantized_file_is_requantized_only_when_asked(
    quantized: dict[str, Path], tmp_path: Path
) -> None:
    dst = tmp_path / "requantized.gguf"
    with pytest.raises(ExportError, match=r"requantizing from type \w+ is disabled"):
        quantize_gguf(quantized["Q4_1"], dst, "Q8_0")
    assert not dst.exists()
    summary = quantize_gguf(quantized["Q4_1"], dst, "Q8_0", allow_requantize=True)
    assert summary.file_type == "Q8_0" and summary.tensor_count == N_TENSORS


def test_quantizing_a_broken_file_fails_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)
    dst = tmp_path / "out.gguf"
    with pytest.raises(ExportError, match="quantizing to Q4_0 failed") as failed:
        quantize_gguf(broken, dst)
    assert "failed to load model from broken.gguf" in str(failed.value)  # llama.cpp's words
    assert str(tmp_path) not in str(failed.value)
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [broken]
    with pytest.raises(ValueError, match="unknown quantization type"):
        quantize_gguf(broken, dst, "Q3_X")


def test_tokenizer_metadata_built_from_the_hf_tokenizer(
    tiny_model: Any, smol_tokenizer: Any, source_gguf: Path, tmp_path: Path
) -> None:
    """Without a source GGUF the metadata comes from the tokenizer: llama.cpp then splits text
    into the same tokens as transformers, and has the chat template."""
    path = tmp_path / "from-hf.gguf"
    export_gguf_f16(tiny_model, smol_tokenizer, path)
    assert source_field(path, gguf.Keys.Tokenizer.MODEL) == "gpt2"
    assert source_field(path, gguf.Keys.Tokenizer.PRE) == "smollm"
    template = source_field(path, gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    assert template == source_field(source_gguf, gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    assert source_field(path, gguf.Keys.Tokenizer.EOS_ID) == smol_tokenizer.eos_token_id
    texts = ["Hello world!", "  two  spaces, 123 numbers\nand a newline", "naïve café"]
    found = llama_tokenize(path, [(t, False) for t in texts] + [("<|im_start|>", True)])
    for text, tokens in zip(texts, found, strict=False):
        assert tokens == smol_tokenizer.encode(text, add_special_tokens=False), text
    im_start = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert found[-1] == [im_start]


def test_export_refuses_what_it_cannot_write(
    tiny_model: Any, source_gguf: Path, tmp_path: Path
) -> None:
    small = scaled_llama(100)
    with pytest.raises(ExportError, match="100 token embeddings"):
        export_gguf_f16(small, None, tmp_path / "x.gguf", source_gguf=source_gguf)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ExportError, match="Llama-architecture models only"):
        export_gguf_f16(gpt2, None, tmp_path / "x.gguf", source_gguf=source_gguf)
    with pytest.raises(ExportError, match="needs the source GGUF or a tokenizer"):
        export_gguf_f16(tiny_model, None, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_hf_folder_round_trip(small_model: Any, tokenizer: Any, tmp_path: Path) -> None:
    folder = save_hf_folder(small_model, tokenizer, tmp_path / "hf")
    assert (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
    )
    tokens = [0, 5, 300, 17]
    assert np.array_equal(torch_logits(loaded.eval(), tokens), torch_logits(small_model, tokens))
    reloaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.encode("the quick fox") == tokenizer.encode("the quick fox")


def test_adapter_saved_alone_and_loads_back(small_model: Any, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    base = copy.deepcopy(small_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    with pytest.raises(ExportError, match="merge_and_unload"):
        save_hf_folder(peft_model, None, tmp_path / "hf")  # type: ignore[arg-type]
    folder = save_adapter(peft_model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(small_model), str(folder)).eval()
    tokens = [0, 5, 300, 17]
    want = torch_logits(peft_model.eval(), tokens)
    assert np.allclose(torch_logits(reloaded, tokens), want, atol=1e-5)
    assert not np.allclose(want, torch_logits(small_model, tokens), atol=1e-2)
