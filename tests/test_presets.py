import json

import pytest

from studio import models
from studio.memory import preset_table
from studio.presets import Preset, TrainSettings, get_preset, load_preset_file, load_presets


def test_shipped_presets_load_with_the_documented_shapes():
    presets = load_presets()
    assert set(presets) >= {"gpt2", "gpt2-medium", "v1", "v2", "char", "tiny-tale"}
    v1, v2 = presets["v1"], presets["v2"]
    assert (v1.n_layer, v1.n_embd, v1.n_head, v1.d_ff, v1.block_size, v1.vocab_size) == (3, 128, 4, 512, 128, 50257)
    assert (v2.n_layer, v2.n_embd, v2.n_head, v2.d_ff, v2.dropout) == (4, 192, 6, 768, 0.1)
    assert (presets["char"].n_layer, presets["char"].block_size, presets["char"].tokenizer) == (8, 64, "char")
    assert (presets["tiny-tale"].block_size, presets["tiny-tale"].vocab_size) == (256, 8192)
    nano = presets["shakespeare-char"]  # nanoGPT's laptop model, with its AdamW beta2
    assert (nano.n_layer, nano.n_head, nano.n_embd, nano.block_size, nano.dropout, nano.tokenizer) == \
        (4, 4, 128, 64, 0.0, "char")
    assert (nano.train.beta2, nano.train.eval_interval) == (0.99, 250)
    assert all(p.source for p in presets.values()), "every preset says where its settings come from"


def test_exact_parameter_counts_without_download():
    table = preset_table([get_preset("gpt2"), get_preset("gpt2-medium"), get_preset("v1")]).set_index("preset")
    assert table.loc["gpt2", "params"] == 124_439_808
    assert table.loc["gpt2-medium", "params"] == 354_823_168
    assert table.loc["gpt2", "train_fp32_gb"] == pytest.approx(16 * 124_439_808 / 1024**3)
    # v1 is "about 7M": embeddings 50257*128 + positions 128*128 + 3 blocks
    assert 6.5e6 < table.loc["v1", "params"] < 7.5e6


@pytest.mark.parametrize("field, value, needle", [
    ("n_embd", 130, "n_embd (130) must be divisible by n_head"),
    ("n_layer", -1, "n_layer must be in [1, 48], got -1"),
    ("n_head", 0, "n_head must be in [1, 64], got 0"),
    ("block_size", 0, "block_size must be in [1, 8,192], got 0"),
    ("dropout", 1.0, "dropout must be in [0, 1)"),
    ("dropout", -0.1, "dropout must be in [0, 1)"),
    ("tokenizer", "words", "tokenizer must be one of"),
    ("kind", "magic", "kind must be one of"),
    ("n_inner", -5, "n_inner must be in [0, 16,384]"),
])
def test_bad_preset_field_is_named(field, value, needle):
    with pytest.raises(ValueError, match=None) as e:
        Preset(**{"name": "x", "n_embd": 128, "n_head": 4, field: value})
    assert needle in str(e.value)


@pytest.mark.parametrize("field, value", [("learning_rate", 0), ("learning_rate", 2.0), ("batch_size", 0),
                                          ("warmup_steps", -1), ("grad_clip", -1.0), ("weight_decay", 1.5),
                                          ("beta2", 1.0), ("beta2", 0.0)])
def test_bad_train_setting_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        TrainSettings(**{field: value})


def test_preset_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"n_layers": 3}))
    with pytest.raises(ValueError, match=r"x.json: unknown key\(s\) \['n_layers'\]; valid keys: .*n_layer"):
        load_preset_file(bad)
    bad.write_text(json.dumps({"train": {"lr": 1}}))
    with pytest.raises(ValueError, match=r"x.json.train: unknown key"):
        load_preset_file(bad)
    bad.write_text(json.dumps({"decode": {"top_p": 1.5}}))
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        load_preset_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_preset_file(bad)


def test_pretrained_preset_needs_a_hub_id_and_gpt2_needs_its_vocab():
    with pytest.raises(ValueError, match="hf_id"):
        Preset(name="p", kind="pretrained")
    with pytest.raises(ValueError, match="vocab_size must be 50257"):
        Preset(name="p", vocab_size=1000)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"preset 'nope' not found; presets: \[.*'v1'"):
        get_preset("nope")
    with pytest.raises(ValueError, match="expected a preset"):
        models.resolve("nope")


def test_a_designed_preset_is_saved_in_the_checkpoints_folder_and_listed():
    from studio import checkpoints_dir
    from studio.memory import design
    from studio.presets import design_preset, save_preset

    preset = design_preset("my-v1", n_layer=3, n_embd=128, n_head=4, n_inner=512, block_size=128)
    d = design(preset)
    assert d["params"] == 7_044_352 and d["rule_of_thumb_tokens"] == 20 * 7_044_352  # v1's architecture
    assert d["train_step_fp32_gb"] > d["train_fp32_gb"]  # activations come on top
    path = save_preset(preset)
    assert path == checkpoints_dir() / "_presets" / "my-v1.json"
    names = list(load_presets())
    assert names.index("my-v1") > names.index("v2")  # after the shipped ones
    assert get_preset("my-v1") == load_preset_file(path) and get_preset("my-v1").d_ff == 512
    assert models.resolve("my-v1").preset.n_layer == 3  # trainable as a preset at once


def test_a_designed_preset_never_shadows_a_shipped_one():
    from studio.presets import design_preset, save_preset, user_presets_dir

    with pytest.raises(ValueError, match="name 'v1' is a shipped preset; choose another name"):
        save_preset(design_preset("v1", n_layer=1, n_embd=64, n_head=2))
    user_presets_dir().mkdir(parents=True, exist_ok=True)
    (user_presets_dir() / "v2.json").write_text(json.dumps({"name": "v2", "n_layer": 1}))  # put there by hand
    try:
        assert load_presets()["v2"].n_layer == 4 and get_preset("v2").n_layer == 4
    finally:
        (user_presets_dir() / "v2.json").unlink()


@pytest.mark.parametrize("name, arch, needle", [
    ("../evil", {}, "name must be a plain name"),
    ("ok", {"n_embd": 250}, "n_embd (250) must be divisible by n_head (4)"),  # a preset file's own message
    ("ok", {"tokenizer": "gpt2", "vocab_size": 1000}, "vocab_size must be 50257 with the gpt2 tokenizer"),
    ("ok", {"dropout": 1.0}, "dropout must be in [0, 1)"),
])
def test_a_bad_design_names_the_field(name, arch, needle):
    from studio.presets import design_preset

    with pytest.raises(ValueError) as e:
        design_preset(name, **{"n_layer": 2, "n_embd": 128, "n_head": 4, **arch})
    assert needle in str(e.value)
