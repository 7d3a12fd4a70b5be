"""The app over HTTP: start on a free port, drive endpoints with gradio_client."""
import pytest
from gradio_client import Client

from studio import decoding, models


@pytest.fixture(scope="module")
def client(app_url, tiny_char_checkpoint):
    return Client(app_url, verbose=False)


def test_generate_endpoint_returns_text(client, tiny_char_checkpoint):
    prompt = "Human: What is 2 plus 3?"
    text = client.predict(tiny_char_checkpoint, prompt, 8, "cpu", 0, api_name="/generate")
    # the model's own decoding defaults with 8 new tokens, seeded: exactly what the engine generates
    settings = models.default_decoding(tiny_char_checkpoint).with_(max_new_tokens=8)
    expected = decoding.generate(models.load(tiny_char_checkpoint, device="cpu"), prompt, [settings])[0]
    assert len(expected.tokens) == 8 and text == expected.text


def test_load_and_describe_endpoints(client, tiny_char_checkpoint):
    status = client.predict(tiny_char_checkpoint, "cpu", 0, api_name="/load_model")
    assert status.startswith(f"{tiny_char_checkpoint} loaded on cpu")
    md = client.predict("v2", api_name="/describe")
    assert "11.45M parameters" in md and "| 4 | 192 | 6 | 768 | 128 |" in md


def test_bad_model_is_a_clear_error(client):
    with pytest.raises(Exception, match="model 'nope' not found"):
        client.predict("nope", "cpu", 0, api_name="/load_model")


def test_design_endpoint_counts_validates_and_saves(client):
    v1_arch = [3, 128, 4, 512, 128, "gpt2", 50257, 0.0]  # layers, width, heads, d_ff, context, tokenizer, vocab, dropout
    md = client.predict("", *v1_arch, api_name="/design_preset")
    assert "7,044,352 parameters" in md and f"{20 * 7_044_352:,} training tokens" in md
    bad = client.predict("x", 3, 130, 4, 512, 128, "gpt2", 50257, 0.0, api_name="/design_preset")
    assert bad == "**Not a valid preset:** n_embd (130) must be divisible by n_head (4)"
    with pytest.raises(Exception, match="name 'v1' is a shipped preset"):
        client.predict("v1", *v1_arch, api_name="/save_preset")
    saved, _ = client.predict("ui-design", *v1_arch, api_name="/save_preset")
    assert "ui-design.json" in saved and models.resolve("ui-design").preset.d_ff == 512


def test_evaluate_endpoint_scores_an_uploaded_text(client, tiny_char_checkpoint, tmp_path):
    from gradio_client import handle_file

    from studio.evaluate import score

    text = "Human: What is 2 plus 3?\nAssistant: 5\n\n" * 4
    path = tmp_path / "eval.txt"
    path.write_text(text)
    table, _ = client.predict([tiny_char_checkpoint], "file", handle_file(str(path)), "", "all", "documents", 8,
                              "cpu", api_name="/evaluate")
    row = dict(zip(table["headers"], table["data"][0]))
    expected = score(models.load(tiny_char_checkpoint, device="cpu"), text, stride=8)
    assert row["model"] == tiny_char_checkpoint and row["bytes"] == len(text.encode())
    assert row["bits_per_byte"] == pytest.approx(expected.bits_per_byte, abs=1e-4)
    with pytest.raises(Exception, match="data file: upload a file"):
        client.predict([tiny_char_checkpoint], "file", None, "", "all", "documents", 0, "cpu", api_name="/evaluate")


def test_train_tab_offers_every_precision_the_engine_has(client):
    from studio.devices import PRECISIONS

    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/train_start"]["parameters"]
    (precision,) = [p for p in params if p["label"] == "Precision"]
    assert precision["python_type"]["type"] == "Literal[" + ", ".join(f"'{p}'" for p in PRECISIONS) + "]"
    assert "fast" in PRECISIONS
