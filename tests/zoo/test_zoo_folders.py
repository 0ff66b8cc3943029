"""The zoo's folders load as the real checkpoints of their families do (checks the test models themselves)."""

from __future__ import annotations

import json

import pytest
import yaml
from zoo_models import ALL, FAMILIES, Zoo, ids


@pytest.mark.parametrize("key", ALL, ids=ids(ALL))
def test_zoo_folder_loads_like_its_family(zoo: Zoo, key: tuple[str, str]) -> None:
    model = zoo.models[key]
    family = model.family
    tokenizer = zoo.direct(key).tokenizer
    assert type(tokenizer).__name__ == family.tokenizer_class
    assert tokenizer.padding_side == family.padding_side
    assert ("token_type_ids" in tokenizer.model_input_names) == (
        family.name in ("bert-cased", "bert-uncased", "electra", "deberta-v2"))
    config = yaml.safe_load((model.path / "model-config.yaml").read_text())
    assert set(config["handler"]) == {"mode", "save_mode", "max_length"}
    assert (tokenizer.tokenize("Paris")[0] == "paris") == (not family.cased) or family.kind == "generator"
    if model.mode in ("sequence_classification", "token_classification"):
        assert len(json.loads((model.path / "config.json").read_text())["id2label"]) > 2


@pytest.mark.parametrize("family", ["bert-cased", "roberta", "xlm-roberta", "deberta-v2", "modernbert"])
def test_zoo_encoder_special_tokens_frame_the_text(zoo: Zoo, family: str) -> None:
    tokenizer = zoo.direct((family, "sequence_classification")).tokenizer
    ids_ = tokenizer("a b")["input_ids"]
    assert ids_[0] == tokenizer.cls_token_id and ids_[-1] == tokenizer.sep_token_id


def test_zoo_generators_have_a_list_of_eos_ids_and_a_chat_template(zoo: Zoo) -> None:
    direct = zoo.direct(("qwen2", "text_generation"))
    assert len(direct.eos_ids) > 1 and direct.tokenizer.chat_template
    assert direct.tokenizer.eos_token_id in direct.eos_ids
    llama = zoo.direct(("llama", "text_generation")).tokenizer
    assert llama("Hello")["input_ids"][0] == llama.bos_token_id
    assert llama.decode(llama("Zoë 🙂")["input_ids"], skip_special_tokens=True) == "Zoë 🙂"  # byte fallback
    assert all(f.kind in ("encoder", "generator") for f in FAMILIES.values())
