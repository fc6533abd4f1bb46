"""What a training job leaves behind: a Hugging Face folder, the LoRA adapter, GGUF files.

- :func:`save_hf_folder`: safetensors weights, ``config.json`` and the tokenizer files of a
  causal LM (LoRA already merged), the folder the transformers backend serves.
- :func:`save_adapter`: a peft model's adapter alone (``adapter_config.json`` and
  ``adapter_model.safetensors``).
- :func:`export_gguf_f16` (in :mod:`lmaas.training.gguf_export`): an F16 GGUF of a Llama model.
- :func:`quantize_gguf`: llama.cpp's quantizer in a child process, so a crash in native code
  fails the call instead of killing the caller::

      python -m lmaas.training.export quantize SRC DST QTYPE [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from lmaas.training.gguf_export import ExportError, GGUFSummary, export_gguf_f16, gguf_summary

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "QUANT_TYPES",
    "ExportError",
    "GGUFSummary",
    "QuantType",
    "export_gguf_f16",
    "gguf_summary",
    "quantize_gguf",
    "save_adapter",
    "save_hf_folder",
]

QuantType = Literal["Q4_0", "Q4_1", "Q8_0", "Q4_K_M", "F16"]
QUANT_TYPES: Final[tuple[str, ...]] = get_args(QuantType)
# llama.cpp's llama_ftype numbers (include/llama.h).
_LLAMA_FTYPES: Final = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15}
_ERROR_TAIL_LINES: Final = 3


def save_hf_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path
) -> Path:
    """Write ``model`` (safetensors weights and ``config.json``, plus its generation config)
    and ``tokenizer`` (``tokenizer.json``, its config and chat template) into ``out_dir``,
    created if missing. A peft model is refused: merge the adapter first."""
    if hasattr(model, "peft_config"):
        raise ExportError("save the merged model (peft's merge_and_unload), not the peft wrapper")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not any(out_dir.glob("*.safetensors")):
        raise ExportError("transformers wrote no safetensors weights")
    return out_dir


def save_adapter(peft_model: Any, out_dir: Path) -> Path:
    """Write a peft model's adapter alone into ``out_dir``: ``adapter_config.json`` and
    ``adapter_model.safetensors`` (loadable with ``PeftModel.from_pretrained``)."""
    if not hasattr(peft_model, "peft_config"):
        raise ExportError("save_adapter needs a peft model")
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    if not (out_dir / "adapter_model.safetensors").is_file():
        raise ExportError("peft wrote no adapter_model.safetensors")
    return out_dir


def quantize_gguf(
    src: Path,
    dst: Path,
    qtype: str = "Q4_0",
    *,
    threads: int = 1,
    timeout: float | None = None,
    allow_requantize: bool = False,
) -> GGUFSummary:
    """Quantize the GGUF ``src`` (F16 or F32) to ``dst`` with llama.cpp's quantizer.

    ``qtype`` is one of :data:`QUANT_TYPES`. With ``allow_requantize``, ``src`` may itself be
    quantized (llama.cpp dequantizes its tensors first: the result is no better than ``src``).
    The work runs in a child process with ``threads`` threads; ``dst`` appears whole or not at
    all. Raises ``ValueError`` for an unknown type and ``ExportError`` (with llama.cpp's last
    words) when the quantizer fails, crashes or runs past ``timeout`` seconds.
    """
    if qtype not in _LLAMA_FTYPES:
        raise ValueError(f"unknown quantization type {qtype!r}; one of {', '.join(QUANT_TYPES)}")
    if not src.is_file():
        raise ExportError(f"no GGUF file to quantize at {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial")
    command = [sys.executable, "-m", "lmaas.training.export", "quantize"]
    command += [str(src), str(partial), qtype, "--threads", str(max(1, threads))]
    if allow_requantize:
        command.append("--allow-requantize")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            reason = _failure(done, {src: src.name, partial: dst.name})
            raise ExportError(f"quantizing to {qtype} failed: {reason}")
        os.replace(partial, dst)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"quantizing to {qtype} took longer than {timeout:g} s") from exc
    finally:
        partial.unlink(missing_ok=True)
    return gguf_summary(dst)


def _failure(done: subprocess.CompletedProcess[str], paths: dict[Path, str]) -> str:
    """llama.cpp's own words from the child's output, with the server's paths cut to names."""
    reason = ""
    for line in reversed(done.stdout.strip().splitlines()):
        if line.startswith("{"):
            reason = str(json.loads(line).get("error", ""))
            break
    if done.returncode < 0:
        reason = f"the quantizer died of {signal.Signals(-done.returncode).name}"
    said = [line for line in done.stderr.strip().splitlines() if line.strip()]
    tail = " | ".join(said[-_ERROR_TAIL_LINES:])
    message = ": ".join(part for part in (reason, tail) if part)
    for path, shown in paths.items():
        message = message.replace(str(path), shown)
    return message or f"the quantizer exited with status {done.returncode}"


def _quantize_here(src: str, dst: str, qtype: str, threads: int, requantize: bool) -> int:
    """The child's side: one call into llama.cpp; a JSON error line on stdout on failure."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_FTYPES[qtype]
    params.nthread = threads
    params.allow_requantize = requantize
    status = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if status != 0:
        print(json.dumps({"error": f"llama.cpp's quantizer returned {status}"}))
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmaas.training.export")
    commands = parser.add_subparsers(dest="command", required=True)
    quantize = commands.add_parser("quantize", help="quantize a GGUF file with llama.cpp")
    quantize.add_argument("src")
    quantize.add_argument("dst")
    quantize.add_argument("qtype", choices=QUANT_TYPES)
    quantize.add_argument("--threads", type=int, default=1)
    quantize.add_argument("--allow-requantize", action="store_true")
    args = parser.parse_args(argv)
    return _quantize_here(args.src, args.dst, args.qtype, args.threads, args.allow_requantize)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
