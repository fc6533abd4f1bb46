"""llama.cpp through llama-cpp-python's low-level API: one context, many sequence slots.

The backend packages are the only places that import a model library.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

from lmaas.config import EngineConfig, cpu_threads
from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import ModelInfo, SamplingParams
from lmaas.worker.backends.base import BatchEntry
from lmaas.worker.backends.llamacpp.fragments import FragmentTokenizer, SpecialToken
from lmaas.worker.backends.llamacpp.tool_grammar import tool_call_grammar
from lmaas.worker.prompt import bounded_special_tokens

log = logging.getLogger(__name__)

_GREEDY_EPS = 1e-5
# llama.cpp parses a grammar's groups by recursion and overflows its stack (a crash, not an
# error) near 20,000 levels; refusing past this leaves room for any thread's stack. The gateway
# bounds JSON schemas far below it (Limits.schema_*), so this only guards what slips past.
MAX_GRAMMAR_NESTING = 4096
# llama.cpp's bound on sequence ids in one context (LLAMA_MAX_SEQ in llama-cparams.h).
LLAMA_MAX_SEQ = 256


@dataclass(slots=True)
class SeqSampler:
    """One sequence's samplers: the chain, and apart from it the (slow) grammar, if any.

    Checking the grammar against the one token the chain picked is cheap; applying it to the
    whole vocabulary is not (tens of ms), so that is done only when the pick is rejected.
    """

    chain: ctypes.c_void_p
    grammar: ctypes.c_void_p | None = None


_CANDIDATE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def _quiet_log_callback() -> object:
    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level == 4:  # GGML_LOG_LEVEL_ERROR (0 none, 1 debug, 2 info, 3 warn, 5 cont)
            log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

    return _cb


class LlamaCppBackend:
    """Owns the model, the context and one reusable batch. Not thread-safe: one loop drives it,
    except ``tokenize``/``piece`` which only read the vocabulary."""

    def __init__(self, name: str, path: Path, config: EngineConfig) -> None:
        self._log_cb = _quiet_log_callback()
        llama_cpp.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        self.name = name
        self.path = path
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path.name}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = config.context_size
        cparams.n_batch = config.max_batch_tokens
        cparams.n_ubatch = config.max_batch_tokens
        # Sequence ids past the slots hold the prefix cache's cells (scheduler/prefix.py).
        self.prefix_ids = (
            min(config.prefix_cache_entries, LLAMA_MAX_SEQ - config.max_num_seqs)
            if config.prefix_cache
            else 0
        )
        cparams.n_seq_max = config.max_num_seqs + self.prefix_ids
        cparams.kv_unified = True
        threads = cpu_threads(config.threads)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.context_size = int(llama_cpp.llama_n_ctx(self.ctx))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.max_batch_tokens = config.max_batch_tokens
        self.batch = llama_cpp.llama_batch_init(config.max_batch_tokens, 0, 1)
        # The scheduler keeps a few cells per slot in reserve (see kv_capacity).
        self.kv_capacity = self.context_size - config.max_num_seqs
        self.max_model_len = min(
            config.max_model_len or self.n_ctx_train, self.n_ctx_train, self.kv_capacity
        )
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.eos_id = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.bos_id = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._fragments: FragmentTokenizer | None = None
        self._fragments = self._fragment_tokenizer()
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._cand = np.zeros(self.n_vocab, dtype=_CANDIDATE)
        self._one = np.zeros(1, dtype=_CANDIDATE)

    # --- vocabulary ----------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]:
        if parse_special and self._fragments is not None:
            return self._fragments.tokenize(text, add_bos=add_bos and self.add_bos)
        return self._tokenize(text, add_bos=add_bos, parse_special=parse_special)

    def _fragment_tokenizer(self) -> FragmentTokenizer | None:
        """Repeated stretches tokenized once (``fragments``), where that is exact."""
        vocab = self.vocab
        bpe = llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_BPE
        if not bpe or llama_cpp.llama_vocab_get_add_eos(vocab):
            return None
        splits = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        strips = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
        specials = []
        for token, attr, raw_text in self._special_vocab:
            try:
                text = raw_text.decode("utf-8")
            except UnicodeDecodeError:
                return None  # a cut llama.cpp makes that no str can name
            specials.append(SpecialToken(text, token, bool(attr & splits), bool(attr & strips)))

        def raw(text: str) -> list[int]:
            return self._tokenize(text, add_bos=False, parse_special=True)

        return FragmentTokenizer(raw, specials, self.bos_id)

    def _tokenize(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_bos and self.add_bos, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_bos and self.add_bos, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for when rendered as output (special tokens render empty)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        out = buf.raw[:n]
        self._pieces[token] = out
        return out

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, 256)
        if n < 0:
            return None
        if n >= 256:
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", "replace")

    def info(self) -> ModelInfo:
        template = llama_cpp.llama_model_chat_template(self.model, None)
        return ModelInfo(
            name=self.name,
            path=str(self.path),
            n_vocab=self.n_vocab,
            n_ctx_train=self.n_ctx_train,
            max_model_len=self.max_model_len,
            context_size=self.context_size,
            max_num_seqs=int(llama_cpp.llama_n_seq_max(self.ctx)) - self.prefix_ids,
            chat_template=template.decode("utf-8") if template else None,
            bos_token=self.piece_special(self.bos_id),
            eos_token=self.piece_special(self.eos_id),
            add_bos=self.add_bos,
            bos_token_id=self.bos_id if self.bos_id >= 0 else None,
            eos_token_id=self.eos_id if self.eos_id >= 0 else None,
            architecture=self._meta("general.architecture") or "unknown",
            n_params=int(llama_cpp.llama_model_n_params(self.model)),
            size_bytes=self.path.stat().st_size,
            special_tokens=bounded_special_tokens(self._special_texts(), self.name),
        )

    @functools.cached_property
    def _special_vocab(self) -> list[tuple[int, int, bytes]]:
        """(id, attributes, text) of the tokens llama.cpp's special-token parse cuts out
        (control, user-defined and unknown): one pass over the vocabulary at load."""
        kinds = (
            llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
            | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        )
        out = []
        for token in range(self.n_vocab):
            attr = llama_cpp.llama_vocab_get_attr(self.vocab, token)
            if attr & kinds:
                out.append((token, attr, llama_cpp.llama_vocab_get_text(self.vocab, token)))
        return out

    def _special_texts(self) -> list[str]:
        """Texts of the tokens only a special-token parse produces (control and unknown)."""
        kinds = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        texts = []
        for _, attr, raw in self._special_vocab:
            if attr & kinds:
                try:
                    texts.append(raw.decode("utf-8"))
                except UnicodeDecodeError:  # no str content can hold it
                    continue
        return texts

    def piece_special(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    # --- sampling ------------------------------------------------------------------------

    def make_sampler(self, params: SamplingParams) -> SeqSampler:
        """llama.cpp samplers for one sequence; free them with ``free_sampler``."""
        sparams = llama_cpp.llama_sampler_chain_default_params()
        chain = llama_cpp.llama_sampler_chain_init(sparams)
        add = llama_cpp.llama_sampler_chain_add
        sampler = SeqSampler(chain)
        try:
            if params.logit_bias:
                n = len(params.logit_bias)
                arr = (llama_cpp.llama_logit_bias * n)()
                for i, (tok, bias) in enumerate(params.logit_bias.items()):
                    arr[i].token = tok  # type: ignore[assignment]
                    arr[i].bias = bias
                add(chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, n, arr))
            grammar = self._grammar_text(params)
            if grammar is not None:
                sampler.grammar = self._init_grammar(grammar)
            if (
                params.repetition_penalty != 1.0
                or params.presence_penalty != 0.0
                or params.frequency_penalty != 0.0
            ):
                add(
                    chain,
                    llama_cpp.llama_sampler_init_penalties(
                        self.n_vocab,
                        self.max_model_len,  # the whole generated text
                        params.repetition_penalty,
                        params.frequency_penalty,
                        params.presence_penalty,
                    ),
                )
            if params.temperature < _GREEDY_EPS:
                add(chain, llama_cpp.llama_sampler_init_greedy())
            else:
                if params.top_k > 0:
                    add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
                if params.top_p < 1.0:
                    add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
                if params.min_p > 0.0:
                    add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
                add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
                seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
                add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            self.free_sampler(sampler)
            raise
        return sampler

    def _init_grammar(self, grammar: str) -> ctypes.c_void_p:
        """A grammar sampler (slow for a large grammar: the worker calls this off the thread
        that answers pings, see ``worker/preparer.py``)."""
        if (
            grammar.count("(") > MAX_GRAMMAR_NESTING
            and grammar_nesting(grammar) > MAX_GRAMMAR_NESTING
        ):
            raise InvalidRequestError(
                f"the grammar nests its groups deeper than {MAX_GRAMMAR_NESTING} levels",
                param="response_format",
            )
        try:
            text = grammar.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "the grammar is not valid Unicode text", param="response_format"
            ) from None
        g = llama_cpp.llama_sampler_init_grammar(self.vocab, text, b"root")
        if not g:
            raise InvalidRequestError("the grammar could not be parsed", param="response_format")
        sampler: ctypes.c_void_p = g
        return sampler

    @staticmethod
    def _grammar_text(params: SamplingParams) -> str | None:
        if params.grammar is not None:
            return params.grammar
        if params.tool_calls is not None:
            return tool_call_grammar(params.tool_calls.model_dump_json())
        if params.json_schema is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF

        if params.json_schema == {}:
            return str(JSON_GBNF)
        return schema_grammar(json.dumps(params.json_schema))

    def sample(self, sampler: SeqSampler, batch_index: int) -> int:
        """Sample from the logits of batch entry ``batch_index``; the samplers accept the token."""
        if sampler.grammar is None:
            return int(llama_cpp.llama_sampler_sample(sampler.chain, self.ctx, batch_index))
        token = self._apply(sampler.chain, batch_index)
        one = self._one
        one[0] = (token, 0.0, 0.0)
        arr = self._token_array(one)
        llama_cpp.llama_sampler_apply(sampler.grammar, ctypes.byref(arr))
        if not np.isfinite(one[0]["logit"]):  # the grammar rejects it: constrain, then resample
            token = self._apply(sampler.chain, batch_index, first=sampler.grammar)
        llama_cpp.llama_sampler_accept(sampler.grammar, token)
        llama_cpp.llama_sampler_accept(sampler.chain, token)
        return token

    @staticmethod
    def _token_array(cand: npt.NDArray[np.void]) -> llama_cpp.llama_token_data_array:
        return llama_cpp.llama_token_data_array(
            data=cand.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(cand),
            selected=-1,
            sorted=False,
        )

    def _apply(
        self, chain: ctypes.c_void_p, batch_index: int, first: ctypes.c_void_p | None = None
    ) -> int:
        """Run samplers over the full vocabulary of one output row; returns the pick."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, batch_index)
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        cand["p"] = 0.0
        arr = self._token_array(cand)
        if first is not None:
            llama_cpp.llama_sampler_apply(first, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
        return int(cand[arr.selected]["id"])

    def free_sampler(self, sampler: SeqSampler) -> None:
        llama_cpp.llama_sampler_free(sampler.chain)
        if sampler.grammar is not None:
            llama_cpp.llama_sampler_free(sampler.grammar)
            sampler.grammar = None

    def logprobs_row(self, batch_index: int) -> npt.NDArray[np.float32]:
        """Log-softmax of the raw logits of batch entry ``batch_index`` (a copy)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, batch_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32)
        logits -= logits.max()
        logits -= np.log(np.exp(logits).sum())
        return logits

    def logits(self, batch_index: int) -> npt.NDArray[np.float32]:
        """The raw logits of batch entry ``batch_index`` (a view, valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, batch_index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # --- the batch -----------------------------------------------------------------------

    def clear_slot(self, slot: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def copy_slot(self, src: int, dst: int) -> None:
        """Make ``dst`` hold exactly ``src``'s cells. In the unified KV cache the cells are
        shared, not copied: each cell only gains ``dst`` among its sequence ids."""
        llama_cpp.llama_memory_seq_rm(self.memory, dst, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make ``dst`` hold ``src``'s cells of positions ``[0, n)`` (shared, as above)."""
        llama_cpp.llama_memory_seq_rm(self.memory, dst, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, 0, n)

    def decode(self, entries: Sequence[BatchEntry]) -> int:
        """Decode one batch; returns llama_decode's status (0 ok, 1 no KV room, else error).

        Logits and samples of entry ``i`` (with ``want_logits``) are then read with index ``i``.
        """
        batch = self.batch
        n = len(entries)
        if n > self.max_batch_tokens:
            raise ValueError("batch larger than max_batch_tokens")
        tok, pos, nseq, seq, logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        for i, e in enumerate(entries):
            tok[i] = e.token
            pos[i] = e.pos
            nseq[i] = 1
            seq[i][0] = e.slot
            logits[i] = e.want_logits
        batch.n_tokens = n
        return int(llama_cpp.llama_decode(self.ctx, batch))

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


@functools.lru_cache(maxsize=32)
def schema_grammar(schema_json: str) -> str:
    """The GBNF grammar of a JSON schema; the n choices of one request share one conversion."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(schema_json))
    except Exception as exc:  # the converter raises many kinds on schemas it cannot express
        raise InvalidRequestError(
            f"the JSON schema cannot be turned into a grammar: {type(exc).__name__}: "
            f"{str(exc)[:200]}",
            param="response_format.json_schema.schema",
        ) from exc


def grammar_nesting(grammar: str) -> int:
    """How deep the groups ``( ... )`` of a GBNF grammar nest; quoted literals, character
    classes and comments are skipped."""
    deepest = level = 0
    closer = ""  # the end of the literal or class being skipped
    escaped = in_comment = False
    for char in grammar:
        if in_comment:
            in_comment = char != "\n"
        elif closer:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == closer:
                closer = ""
        elif char == '"':
            closer = '"'
        elif char == "[":
            closer = "]"
        elif char == "#":
            in_comment = True
        elif char == "(":
            level += 1
            deepest = max(deepest, level)
        elif char == ")":
            level = max(level - 1, 0)
    return deepest
